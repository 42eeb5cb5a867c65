"""`curate classifier train`: fit the fastText quality classifier that the quality stage's
`fasttext` scorer uses (the algorithm: curate/stages/quality/classifier.py)."""
from __future__ import annotations

import click

from curate.stages.quality.classifier import TrainOptions, train_classifier


@click.group("classifier")
def classifier_cli() -> None:
    """Train the fastText quality classifier used by `scorer = "fasttext"`."""


@classifier_cli.command("train")
@click.option("--positive", "-p", multiple=True, required=True, help="File of good examples (repeat for several).")
@click.option("--negative", "-n", multiple=True, required=True, help="File of bad examples (repeat for several).")
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False), help="Where to write the model (.bin).")
@click.option("--format", "fmt", default="auto", show_default=True,
              type=click.Choice(["auto", "alpaca", "sharegpt", "messages", "dolly", "prompt_completion"]))
@click.option("--view", default="conversation", show_default=True,
              help="Which text view of each conversation the classifier reads (see curate/contract/views.py).")
@click.option("--ngrams", "word_ngrams", default=2, show_default=True, help="Word n-gram length (fastText wordNgrams).")
@click.option("--epoch", default=0, show_default=True,
              help="Training epochs; 0 = choose among 3/5/10/20 by AUC on a validation slice of the training part.")
@click.option("--dim", default=64, show_default=True)
@click.option("--lr", default=0.1, show_default=True)
@click.option("--min-count", default=1, show_default=True)
@click.option("--bucket", default=200_000, show_default=True,
              help="Hash buckets for word n-grams; model size is about (words + bucket) x dim x 4 bytes.")
@click.option("--balance/--no-balance", default=True, show_default=True,
              help="Repeat the minority class's lines so both classes weigh the same.")
@click.option("--holdout", default=0.2, show_default=True, help="Fraction held out for precision/recall/AUC.")
@click.option("--seed", default=0, show_default=True)
@click.option("--threads", default=1, show_default=True, help="fastText threads (1 = deterministic).")
def train_command(positive, negative, output, fmt, view, word_ngrams, epoch, dim, lr, min_count, bucket, balance,
                  holdout, seed, threads):
    """Fit a supervised fastText classifier: good (--positive) vs noisy (--negative)."""
    from curate.contract.views import VIEWS

    if view not in VIEWS:
        raise click.BadParameter(f"must be one of {', '.join(VIEWS)}", param_hint="--view")
    if epoch < 0:
        raise click.BadParameter("must be 0 (choose) or a positive number of epochs", param_hint="--epoch")
    if not 0.0 <= holdout < 1.0:
        raise click.BadParameter("must be in [0, 1)", param_hint="--holdout")
    opts = TrainOptions(view=view, word_ngrams=word_ngrams, epoch=epoch, dim=dim, lr=lr, min_count=min_count,
                        bucket=bucket, balance=balance, holdout=holdout, seed=seed, threads=threads, fmt=fmt)
    rep = train_classifier(list(positive), list(negative), output, opts)
    tr = rep["train"]
    click.echo(f"trained on {tr['positive']} positive / {tr['negative']} negative examples, {tr['epoch']} epochs "
               f"-> {output}")
    if "holdout" in rep:
        h = rep["holdout"]
        click.echo(f"held-out ({h['n']} examples, {h['positives']} positive): precision {h['precision']:.3f}  "
                   f"recall {h['recall']:.3f}  F1 {h['f1']:.3f}  AUC {h['auc']:.3f}")
    click.echo(f"metrics written to {output}.json")
