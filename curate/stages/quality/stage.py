"""`quality`: score every example; never drop (a `select` stage decides on the score).

    [[stages]]
    kind = "quality"
    scorer = "heuristic" | "fasttext" | "perplexity" | "ifd" | "verifier"

The score goes into a column named after the scorer (or `column`), so several quality
stages can run one after another. Extra columns:
  heuristic   heuristic_<feature> for each feature (see curate/stages/quality/heuristic.py)
  perplexity  perplexity = exp(loss of the answer given the prompt), perplexity_loss
  ifd         ifd, ifd_loss_cond, ifd_loss_answer (see curate/stages/common/lm.py)
  verifier    verifier_error (the exception text where the function failed)
  with `embed = true` (LM scorers): <column>_embedding, the LM's mean last hidden state,
  for `select`'s diversity with `embedding = "column"`.

LM input: the turns before the last assistant turn, each as `<role prefix><content>`
joined by `separator`, then the assistant prefix; the answer is the last assistant turn.
The default prefixes are a plain "User: ... / Assistant: " format that any base model can
read; set `roles` to match the format the model was trained on. LM scores are cached by
record id in the stage's directory, keyed by a fingerprint of the model, adapter and
settings, so reruns only score new records.
"""
from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl

from curate.stages.base import Stage, StageResult
from curate.contract.typed_config import ConfigError
from curate.contract.views import VIEWS, text_view

LM_SCORERS = ("perplexity", "ifd")
HIGHER_IS_BETTER = ("heuristic", "fasttext", "verifier")  # the others are losses: lower is better
DEFAULT_ROLES = {"system": "System: ", "user": "User: ", "assistant": "Assistant: ", "tool": "Tool: "}


@dataclass
class Config:
    kind: Literal["quality"]
    scorer: Literal["heuristic", "fasttext", "perplexity", "ifd", "verifier", "cv_loss"]
    name: str | None = None
    column: str | None = None  # default: the scorer's name
    # fasttext: the classifier .bin; perplexity/ifd: a local AutoModelForCausalLM directory
    model: str | None = None
    adapter: str | None = None  # perplexity/ifd: a local PEFT adapter directory on top of `model`
    # fasttext
    view: str = "conversation"
    label: str = "__label__hq"
    # heuristic
    weights: dict[str, float] = field(default_factory=dict)
    length_target: int = 50
    # perplexity / ifd
    batch_size: int = 16
    max_length: int = 512
    max_batch_tokens: int = 8192
    device: str = "cpu"  # "cpu", "cuda", "cuda:1", "auto"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    threads: int | None = None  # perplexity/ifd: CPU threads for torch; unset = torch's default (all cores)
    roles: dict[str, str] = field(default_factory=dict)  # role -> prefix, over DEFAULT_ROLES
    separator: str = "\n"
    embed: bool = False
    # Score the end-of-sequence token after each answer (does the model know to stop?).
    # Turn off for base models that never learned to predict EOS: it would dominate.
    score_eos: bool = True
    trust_remote_code: bool = False
    # verifier
    functions: dict[str, str] = field(default_factory=dict)  # task (or "*") -> "module:function"
    python_path: list[str] = field(default_factory=list)
    # cv_loss: train `model` on k-1 folds of the pool, score the held-out fold (k fine-tunings)
    folds: int = 3  # k, 2..5
    cv_method: Literal["lora", "full"] = "lora"  # how each fold's model is fine-tuned
    cv_epochs: int = 1  # passes over the k-1 training folds
    cv_lr: float = 5e-4  # learning rate of the fold fine-tuning
    cv_lora_r: int = 16  # LoRA rank (cv_method = "lora")
    # cv_loss, a second round (iterative cross-validation, "prune and retrain"): the fold
    # models train only on the rows an earlier score trusts (per task, its best
    # `trust_fraction` by `trust_column`, `trust_keep` first); every row is still scored
    # by a model that never trained on it. Unset: train on every row of the other folds.
    trust_column: str | None = None
    trust_keep: Literal["lowest", "highest"] = "lowest"
    trust_fraction: float = 0.6

    @property
    def score_column(self) -> str:
        return self.column or self.scorer

    def output_columns(self) -> list[str]:
        c = self.score_column
        extra = {"perplexity": ["loss"], "ifd": ["loss_cond", "loss_answer"], "verifier": ["error"],
                 "fasttext": [], "cv_loss": ["ratio", "base_loss", "agree", "token_acc", "margin", "regret", "fold"]}.get(self.scorer)
        if extra is None:  # heuristic: one column per feature
            from curate.stages.quality.heuristic import DEFAULT_WEIGHTS

            extra = list(DEFAULT_WEIGHTS)
        return [c] + [f"{c}_{x}" for x in extra] + ([f"{c}_embedding"] if self.embed else [])

    def validate(self) -> None:
        s = self.scorer
        if s in ("fasttext", "perplexity", "ifd", "cv_loss") and not self.model:
            raise ConfigError("model", f"required for scorer = {s!r}")
        if s not in ("fasttext", "perplexity", "ifd", "cv_loss") and self.model:
            raise ConfigError("model", f"not used by scorer = {s!r}")
        if self.adapter and s not in LM_SCORERS:
            raise ConfigError("adapter", "only the perplexity and ifd scorers take an adapter")
        if s == "verifier":
            if not self.functions:
                raise ConfigError("functions", "required for scorer = \"verifier\": {task = \"module:function\"}")
            for task, spec in self.functions.items():
                mod, _, fn = spec.partition(":")
                if not mod or not fn:
                    raise ConfigError(f"functions.{task}", f"must be \"module:function\", got {spec!r}")
        elif self.functions or self.python_path:
            raise ConfigError("functions", "only the verifier scorer takes functions / python_path")
        if s == "heuristic":
            from curate.stages.quality.heuristic import DEFAULT_WEIGHTS

            for k, v in self.weights.items():
                if k not in DEFAULT_WEIGHTS:
                    raise ConfigError(f"weights.{k}", f"unknown feature (known: {', '.join(DEFAULT_WEIGHTS)})")
                if v < 0:
                    raise ConfigError(f"weights.{k}", "must be >= 0")
        elif self.weights:
            raise ConfigError("weights", "only the heuristic scorer takes weights")
        if self.view not in VIEWS:
            raise ConfigError("view", f"must be one of {', '.join(VIEWS)}")
        for k in self.roles:
            if k not in DEFAULT_ROLES:
                raise ConfigError(f"roles.{k}", f"unknown role (known: {', '.join(DEFAULT_ROLES)})")
        if self.embed and s not in LM_SCORERS:
            raise ConfigError("embed", "only the perplexity and ifd scorers make embeddings")
        for key in ("batch_size", "max_length", "max_batch_tokens", "length_target"):
            if getattr(self, key) < 1:
                raise ConfigError(key, "must be >= 1")
        if self.max_length < 8:
            raise ConfigError("max_length", "must be at least 8")
        if s == "cv_loss":
            if not 2 <= self.folds <= 5:
                raise ConfigError("folds", f"must be 2..5, got {self.folds}")
            if self.cv_epochs < 1:
                raise ConfigError("cv_epochs", "must be >= 1")
            if not self.cv_lr > 0:
                raise ConfigError("cv_lr", "must be > 0")
            if self.cv_lora_r < 1:
                raise ConfigError("cv_lora_r", "must be >= 1")
            if not 0 < self.trust_fraction <= 1:
                raise ConfigError("trust_fraction", f"must be in (0, 1], got {self.trust_fraction}")
        elif self.trust_column:
            raise ConfigError("trust_column", "only the cv_loss scorer takes trust_column")

    def check_paths(self, base_dir) -> None:
        def res(p):
            p = Path(p).expanduser()
            return p if p.is_absolute() else Path(base_dir) / p

        if self.scorer == "fasttext" and not res(self.model).is_file():
            raise ConfigError("model", f"no fastText model at {res(self.model)} (train one: curate classifier train)")
        if self.scorer in LM_SCORERS or self.scorer == "cv_loss":
            m = res(self.model)
            if not (m / "config.json").is_file():
                raise ConfigError("model", f"no model directory (config.json) at {m}")
            if not any(m.glob("*.safetensors")):
                raise ConfigError("model", f"{m} has no .safetensors weights (only safetensors are loaded)")
            if self.adapter:
                a = res(self.adapter)
                if not (a / "adapter_config.json").is_file():
                    raise ConfigError("adapter", f"no PEFT adapter (adapter_config.json) at {a}")
                if not (a / "adapter_model.safetensors").is_file():
                    raise ConfigError("adapter", f"{a} has no adapter_model.safetensors (only safetensors are loaded)")
        for i, p in enumerate(self.python_path):
            if not res(p).is_dir():
                raise ConfigError(f"python_path[{i}]", f"no directory at {res(p)}")
        if self.scorer == "verifier":
            # find_spec on the top-level name locates a module without running it
            saved = list(sys.path)
            sys.path[:0] = [str(res(p)) for p in self.python_path]
            try:
                for task, spec in self.functions.items():
                    mod = spec.partition(":")[0]
                    if importlib.util.find_spec(mod.split(".")[0]) is None:
                        raise ConfigError(f"functions.{task}", f"module {mod!r} not found (add its folder to python_path)")
            finally:
                sys.path[:] = saved


def lm_inputs(table: pl.DataFrame, roles: dict[str, str], sep: str) -> pl.DataFrame:
    """`prompt` (the turns before the last assistant turn, formatted, plus the assistant
    prefix) and `answer` (the last assistant turn), column-wise."""
    el = pl.element()
    is_asst = pl.col("messages").list.eval(el.struct.field("role") == "assistant")
    n = pl.col("messages").list.len()
    last = (n - 1 - is_asst.list.reverse().list.arg_max().cast(pl.Int64))
    has = is_asst.list.any().fill_null(False)
    fmt = pl.col("messages").list.head(last).list.eval(
        el.struct.field("role").replace_strict(roles, default="") + el.struct.field("content").fill_null(""))
    context = fmt.list.join(sep)
    prompt = pl.when(context.str.len_chars() > 0).then(context + sep).otherwise(pl.lit("")) + pl.lit(roles["assistant"])
    answer = pl.col("messages").list.get(last, null_on_oob=True).struct.field("content")
    return table.select(
        pl.when(has).then(prompt).otherwise(pl.lit("")).alias("prompt"),
        pl.when(has).then(answer).otherwise(pl.lit("")).fill_null("").alias("answer"),
    )


class QualityStage(Stage):
    kind = "quality"
    Config = Config

    def process(self, table: pl.DataFrame) -> StageResult:
        c = self.config
        col = c.score_column
        if col in table.columns:
            raise ValueError(f"stage {self.name!r}: column {col!r} already exists; give this stage a `column`")
        scorer = getattr(self, f"_score_{c.scorer}")
        scored, extra = scorer(table, col)
        stats = {"scorer": c.scorer, "column": col, **extra, **self.summary(scored, col)}
        stats["signal"] = self.signal(scored, col)
        return StageResult(kept=scored, dropped=table.clear().with_columns(pl.lit(None, pl.String).alias("_reason")),
                           stats=stats)

    # ---------------------------------------------------------------- scorers

    def _score_heuristic(self, table, col):
        from curate.stages.quality import heuristic

        s = heuristic.score(table, self.config.weights, self.config.length_target)
        feats = [f for f in heuristic.DEFAULT_WEIGHTS]
        cols = [s[f].alias(f"{col}_{f}") for f in feats] + [s["score"].alias(col)]
        weights = {**heuristic.DEFAULT_WEIGHTS, **self.config.weights}
        return table.with_columns(cols), {"weights": weights}

    def _score_fasttext(self, table, col):
        from curate.stages.quality import fasttext as ft

        c = self.config
        model = ft.load(self.context.resolve(c.model))
        texts = table.select(ft.prepare(text_view(c.view)).alias("t"))["t"].to_list()
        probs = ft.positive_probability(model, texts, c.label)
        return table.with_columns(pl.Series(col, probs, dtype=pl.Float64)), {"model": c.model, "label": c.label}

    def _score_verifier(self, table, col):
        from curate.stages.quality import verifier

        c = self.config
        fns = verifier.load_functions(c.functions, [self.context.resolve(p) for p in c.python_path])
        scores, errors = verifier.run(table, fns)
        out = table.with_columns(pl.Series(col, scores, dtype=pl.Float64), pl.Series(f"{col}_error", errors, dtype=pl.String))
        n_err = sum(e is not None for e in errors)
        if n_err:
            first = next(e for e in errors if e is not None)
            self.context.log(f"{self.name}: {n_err} record(s) where the verifier failed, e.g. {first}")
        return out, {"functions": dict(c.functions), "errors": n_err}

    def _score_perplexity(self, table, col):
        return self._score_lm(table, col, ifd=False)

    def _score_ifd(self, table, col):
        return self._score_lm(table, col, ifd=True)

    def _score_cv_loss(self, table: pl.DataFrame, col: str):
        """Cross-validated loss: records are split into `folds` by a seeded hash of their
        id (exact copies share an id, so they share a fold: a copy never vouches for
        itself); for each fold a fresh copy of `model` is fine-tuned on the other folds
        and scores this fold's answers. Columns: `col` the held-out answer loss (lower =
        the rest of the pool finds the answer likely), `col_base_loss` the base model's,
        `col_ratio` their ratio (below 1: the pool taught the model this answer), and
        `col_fold`. From the same teacher-forced pass (no generation): `col_agree` 1.0
        where every answer token and the end token is the fold model's top-1 prediction
        (greedy decoding would reproduce the answer exactly; confident learning's "the
        predicted label is the given label", for generation), 0.0 where not, and
        `col_token_acc` the share of answer tokens that are top-1; `col_margin` the worst
        answer token's margin, log p(given) - max over other tokens of log p (AUM per
        token: far below 0 where the fold model is confident of another token than the
        record's, as with a dropped letter), and `col_regret` the mean per-token
        max log p - log p(given) (>= 0; 0 where greedy would reproduce the answer). The
        older columns' values are unchanged by the new ones. The stats give each
        task's held-out agreement rate (`agreement`): near 0, the fold models did not learn
        that task and a disagreement says nothing about a record (select's `gate_min`).
        Not cached: every fold's model depends on the whole pool."""
        from curate.contract.schema import stable_keys
        from curate.stages.common import finetune, lm

        c = self.config
        ctx = self.context
        model_dir = ctx.resolve(c.model)
        roles = {**DEFAULT_ROLES, **c.roles}
        inputs = lm_inputs(table, roles, c.separator)
        prompts, answers = inputs["prompt"].to_list(), inputs["answer"].to_list()
        fold = np.asarray(stable_keys(table["id"].to_list(), ctx.seed, "cv_loss"), dtype=np.uint64) % np.uint64(c.folds)
        fold = fold.astype(np.int64)
        kw = dict(max_length=c.max_length, batch_size=c.batch_size, max_batch_tokens=c.max_batch_tokens,
                  score_eos=c.score_eos)
        model, tok = lm.load_causal_lm(model_dir, None, c.device, c.dtype, c.trust_remote_code)
        base = lm.score(model, tok, prompts, answers, ifd=False, **kw)["loss_cond"]
        held = np.full(table.height, np.nan)
        agree = np.full(table.height, np.nan)
        token_acc = np.full(table.height, np.nan)
        margin = np.full(table.height, np.nan)
        regret = np.full(table.height, np.nan)
        history = {}
        trusted = self._trusted(table, c) if c.trust_column else np.ones(table.height, dtype=bool)
        for f in range(c.folds):
            train_idx, test_idx = np.flatnonzero((fold != f) & trusted), np.flatnonzero(fold == f)
            if not len(test_idx):
                continue
            model, tok = lm.load_causal_lm(model_dir, None, c.device, c.dtype, c.trust_remote_code)
            if c.cv_method == "lora":
                model = finetune.add_lora(model, c.cv_lora_r)
            ctx.log(f"{self.name}: fold {f + 1}/{c.folds}: training on {len(train_idx):,}, scoring {len(test_idx):,}")
            history[str(f)] = finetune.fine_tune(
                model, tok, [prompts[i] for i in train_idx], [answers[i] for i in train_idx], epochs=c.cv_epochs,
                lr=c.cv_lr, seed=ctx.seed * 101 + f, **kw)
            res = lm.score(model, tok, [prompts[i] for i in test_idx], [answers[i] for i in test_idx],
                           ifd=False, want_agreement=True, **kw)
            held[test_idx], agree[test_idx], token_acc[test_idx] = res["loss_cond"], res["agree"], res["token_acc"]
            margin[test_idx], regret[test_idx] = res["margin"], res["regret"]
            del model
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = held / base
        out = table.with_columns(pl.Series(col, lm.finite_or_none(held), dtype=pl.Float64),
                                 pl.Series(f"{col}_base_loss", lm.finite_or_none(base), dtype=pl.Float64),
                                 pl.Series(f"{col}_ratio", lm.finite_or_none(ratio), dtype=pl.Float64),
                                 pl.Series(f"{col}_agree", lm.finite_or_none(agree), dtype=pl.Float64),
                                 pl.Series(f"{col}_token_acc", lm.finite_or_none(token_acc), dtype=pl.Float64),
                                 pl.Series(f"{col}_margin", lm.finite_or_none(margin), dtype=pl.Float64),
                                 pl.Series(f"{col}_regret", lm.finite_or_none(regret), dtype=pl.Float64),
                                 pl.Series(f"{col}_fold", fold, dtype=pl.Int32))
        agreement = self._agreement(out, f"{col}_agree", f"{col}_token_acc")
        for task, a in agreement.items():
            ctx.log(f"{self.name}: task {task!r}: the fold models reproduce {a['agree']:.1%} of its held-out answers "
                    f"exactly (top-1 on {a['token_acc']:.1%} of answer tokens; {a['n']:,} scored)")
        return out, {"model": c.model, "folds": c.folds, "method": c.cv_method, "epochs": c.cv_epochs,
                     "lr": c.cv_lr, "train_loss": history, "agreement": agreement,
                     "fine_tunings": len(history),
                     "trained_records": int(sum(((fold != f) & trusted).sum() for f in range(c.folds))),
                     **({"trust": {"column": c.trust_column, "keep": c.trust_keep, "fraction": c.trust_fraction,
                                   "trusted": int(trusted.sum()), "rows": table.height}} if c.trust_column else {})}

    @staticmethod
    def _trusted(table: pl.DataFrame, c: Config) -> np.ndarray:
        """Rows a second cv round trains on: per task (the whole table without a `task`
        column), the best `trust_fraction` by `trust_column` (rank by value, ties by id, so
        the choice is deterministic); a missing score is never trusted. Per task, because
        an earlier score's scale differs between tasks (a loss ratio near 1 is good on a
        task the fold models never learned) and a global cut would empty a hard task."""
        if c.trust_column not in table.columns:
            raise ConfigError("trust_column", f"no column {c.trust_column!r} (an earlier quality stage must write it)")
        v = pl.col(c.trust_column).cast(pl.Float64)
        v = pl.when(v.is_nan()).then(None).otherwise(v)
        task = pl.col("task") if "task" in table.columns else pl.lit("")
        # the ordinal rank breaks ties by position: rank in id order, so the choice does not
        # depend on the order rows arrive in
        # (ids are unique; polars orders strings by UTF-8 bytes, the same order as code points)
        order = table["id"].cast(pl.String).arg_sort().to_numpy()
        inv = np.empty_like(order)
        inv[order] = np.arange(len(order))
        by_id = table[order].select(
            v.rank("ordinal", descending=c.trust_keep == "highest").over(task).alias("r"),
            v.count().over(task).alias("n"))
        r = by_id["r"].cast(pl.Float64).fill_null(np.inf).to_numpy()  # a missing score: never trusted
        keep = r <= np.ceil(c.trust_fraction * by_id["n"].to_numpy())
        return keep[inv]

    @staticmethod
    def _agreement(scored: pl.DataFrame, agree: str, acc: str) -> dict:
        """Per task: rows scored, the held-out exact-agreement rate and mean token accuracy."""
        per = (scored.filter(pl.col(agree).is_not_null())
               .group_by("task").agg(pl.len().alias("n"), pl.col(agree).mean().alias("a"), pl.col(acc).mean().alias("t"))
               .sort("task"))
        return {t: {"n": int(n), "agree": round(float(a), 6), "token_acc": round(float(x), 6)}
                for t, n, a, x in per.iter_rows()}

    def _score_lm(self, table: pl.DataFrame, col: str, ifd: bool):
        from curate.stages.common import score_cache as cache

        c = self.config
        ctx = self.context
        model_dir = ctx.resolve(c.model)
        adapter = ctx.resolve(c.adapter) if c.adapter else None
        roles = {**DEFAULT_ROLES, **c.roles}
        settings = {"scorer": c.scorer, "max_length": c.max_length, "roles": roles, "sep": c.separator,
                    "embed": c.embed, "dtype": c.dtype, "adapter": bool(adapter), "score_eos": c.score_eos,
                    "tokenization": "joint+eos"}  # bump when lm.score's definition changes
        fp = cache.fingerprint(settings, cache.model_files(model_dir, adapter))
        inputs = lm_inputs(table, roles, c.separator).with_columns(table["id"])
        by_id = {i: (p, a) for i, p, a in inputs.select("id", "prompt", "answer").iter_rows()}
        loaded: dict = {}

        schema = {"id": pl.String, "loss_cond": pl.Float64, "n_tokens": pl.Int64}
        if ifd:
            schema["loss_answer"] = pl.Float64
        if c.embed:
            schema["embedding"] = pl.List(pl.Float32)

        def compute(ids: list[str]) -> pl.DataFrame:
            if not ids:
                return pl.DataFrame(schema=schema)
            from curate.stages.common import lm

            if "m" not in loaded:
                loaded["m"] = lm.load_causal_lm(model_dir, adapter, c.device, c.dtype, c.trust_remote_code, c.threads)
            model, tok = loaded["m"]
            prompts = [by_id[i][0] for i in ids]
            answers = [by_id[i][1] for i in ids]
            res = lm.score(model, tok, prompts, answers, ifd=ifd, max_length=c.max_length, batch_size=c.batch_size,
                           max_batch_tokens=c.max_batch_tokens, want_embeddings=c.embed, score_eos=c.score_eos)
            data = {"id": ids, "loss_cond": lm.finite_or_none(res["loss_cond"]),
                    "n_tokens": res["n_tokens"].tolist()}
            if ifd:
                data["loss_answer"] = lm.finite_or_none(res["loss_answer"])
            if c.embed:
                data["embedding"] = [v.tolist() for v in res["embedding"]]
            return pl.DataFrame(data, schema=schema)

        before = ctx.stage_dir / f"lm-{fp}.parquet"
        had = pl.read_parquet(before, columns=["id"])["id"] if before.is_file() else pl.Series([], dtype=pl.String)
        got = cache.cached(before, table["id"], compute, ctx.log)
        n_cached = int(table["id"].unique().is_in(had.implode()).sum())
        joined = table.select("id").join(got, on="id", how="left", maintain_order="left")
        loss_c = pl.col("loss_cond")
        if ifd:
            ratio = (loss_c - pl.col("loss_answer")).exp()
            new = joined.select(ratio.alias(col), loss_c.alias(f"{col}_loss_cond"),
                                pl.col("loss_answer").alias(f"{col}_loss_answer"))
        else:
            new = joined.select(loss_c.exp().alias(col), loss_c.alias(f"{col}_loss"))
        if c.embed:
            new = new.with_columns(joined["embedding"].alias(f"{col}_embedding"))
        extra = {"model": c.model, "adapter": c.adapter, "cache": before.name, "cached": n_cached,
                 "computed": int(table["id"].n_unique()) - n_cached,
                 "answer_tokens": int(joined["n_tokens"].fill_null(0).sum())}
        return pl.concat([table, new], how="horizontal"), extra

    def signal(self, scored: pl.DataFrame, col: str) -> dict | None:
        """The score's AUC on trusted labels (a `trusted` or `verifier` column made before
        this stage), oriented by the scorer (perplexity, ifd, cv_loss: lower is better);
        None when there are no labels. Public: an executor that scores in blocks calls it
        over the whole table."""
        from curate.stages.common import signal as sig

        label = next((x for x in sig.LABEL_COLUMNS if x in scored.columns and x != col), None)
        if label is None:
            return None
        scores = scored[col].cast(pl.Float64).fill_null(float("nan")).to_numpy()
        labels = scored[label].cast(pl.Float64).fill_null(float("nan")).to_numpy()
        m = sig.measure(scores, labels, higher_is_better=self.config.scorer in HIGHER_IS_BETTER,
                        seed=self.context.seed, label_column=label)
        warn = sig.warning_text(col, m)
        if warn:
            m["warning"] = warn
            self.context.log(f"WARNING {self.name}: {warn}")
        return m

    def summary(self, scored: pl.DataFrame, col: str) -> dict:
        """Score distribution per task (n, scored, mean, quantiles) of `col`: public so that an
        executor that scores in blocks recomputes it over the whole table."""
        s = pl.col(col).cast(pl.Float64)
        valid = s.is_not_null() & s.is_not_nan()
        per = (scored.group_by("task").agg(
            pl.len().alias("n"), valid.sum().alias("scored"),
            s.filter(valid).mean().alias("mean"), s.filter(valid).quantile(0.05).alias("p5"),
            s.filter(valid).median().alias("p50"), s.filter(valid).quantile(0.95).alias("p95"))
            .with_columns(pl.col("task").cast(pl.String)).sort("task"))  # a Categorical task (merge_stats) sorts as text
        rnd = lambda v: None if v is None or (isinstance(v, float) and not np.isfinite(v)) else round(float(v), 6)  # noqa: E731
        return {
            "scored": int(scored.select(valid.sum()).item()) if len(scored) else 0,
            "unscored": int(scored.select((~valid).sum()).item()) if len(scored) else 0,
            "by_task": {r["task"]: {"n": r["n"], "scored": r["scored"], "mean": rnd(r["mean"]), "p5": rnd(r["p5"]),
                                    "p50": rnd(r["p50"]), "p95": rnd(r["p95"])}
                        for r in per.iter_rows(named=True)},
        }


STAGE = QualityStage
