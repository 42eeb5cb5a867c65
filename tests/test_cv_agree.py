"""Cross-validated agreement: from the teacher-forced pass that gives a loss, whether every
answer token (and the end token) is the model's top-1 prediction, i.e. whether greedy
decoding would reproduce the answer exactly."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from curate.stages.common import lm  # noqa: E402


class NextIsPlusOne(torch.nn.Module):
    """A hand-made 'model': after token t it predicts t + 1 (mod V), with a clear margin."""

    def __init__(self, vocab=10):
        super().__init__()
        self.vocab = vocab
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask=None, output_hidden_states=False):
        logits = torch.nn.functional.one_hot((input_ids + 1) % self.vocab, self.vocab).float() * 5.0
        return type("Out", (), {"logits": logits + self.dummy, "hidden_states": None})()


def test_agreement_on_hand_made_logits():
    m = NextIsPlusOne()
    seqs = [[1, 2, 3, 4, 5], [1, 2, 3, 9, 5], [1, 2, 3, 4, 6], [4, 5], [7]]
    starts = [2, 2, 2, 1, 1]  # predicted: positions 2.. (3 tokens), 1.. (1 token), nothing
    r = lm.sequence_stats(m, seqs, starts, pad_id=0, want_agreement=True)
    # seq 0: 3 4 5 all top-1; seq 1: 9 and then 5 after 9 wrong (2 of 3 miss); seq 2: the last one misses
    assert r["agree"][:4].tolist() == [1.0, 0.0, 0.0, 1.0] and np.isnan(r["agree"][4])
    assert np.allclose(r["token_acc"][:4], [1.0, 1 / 3, 2 / 3, 1.0]) and np.isnan(r["token_acc"][4])
    # the loss output other callers use is unchanged by asking for agreement
    loss, count, emb = lm.sequence_losses(m, seqs, starts, 0)
    assert np.allclose(loss[:4], r["loss"][:4]) and count.tolist() == [3, 3, 3, 1, 0] and emb is None
    assert "agree" not in lm.sequence_stats(m, seqs, starts, 0)


class Fixed(torch.nn.Module):
    """A hand-made 'model' whose logits at every position are `row` (whatever the input)."""

    def __init__(self, row):
        super().__init__()
        self.row = torch.tensor(row, dtype=torch.float32)
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask=None, output_hidden_states=False):
        logits = self.row.expand(*input_ids.shape, len(self.row)) + self.dummy
        return type("Out", (), {"logits": logits, "hidden_states": None})()


def test_margin_and_regret_on_hand_made_logits():
    m = NextIsPlusOne()  # logit 5 for t + 1, 0 for every other token
    seqs = [[1, 2, 3, 4, 5], [1, 2, 3, 9, 5], [1, 2, 3, 4, 6], [4, 5], [7]]
    starts = [2, 2, 2, 1, 1]
    r = lm.sequence_stats(m, seqs, starts, pad_id=0, want_agreement=True)
    # agreement everywhere: margin = 5 - 0 > 0, regret 0
    assert r["margin"][0] == pytest.approx(5.0) and r["regret"][0] == 0.0
    assert r["margin"][3] == pytest.approx(5.0) and r["regret"][3] == 0.0
    # seq 1: two tokens the model is confident about disagree with the record (9 for 4, 5 after 9)
    assert r["margin"][1] == pytest.approx(-5.0) and r["regret"][1] == pytest.approx(2 * 5.0 / 3)
    # seq 2: one disagreeing token of three: the worst token decides the margin, the regret averages
    assert r["margin"][2] == pytest.approx(-5.0) and r["regret"][2] == pytest.approx(5.0 / 3)
    assert np.isnan(r["margin"][4]) and np.isnan(r["regret"][4])
    # invariants: regret >= 0; margin >= 0 exactly where greedy reproduces the answer (agree)
    ok = ~np.isnan(r["agree"])
    assert (r["regret"][ok] >= 0).all() and ((r["margin"][ok] >= 0) == (r["agree"][ok] == 1)).all()
    # asking for agreement leaves the loss bit-identical
    assert np.array_equal(lm.sequence_stats(m, seqs, starts, 0)["loss"][:4], r["loss"][:4])


def test_margin_scales_with_the_models_confidence_and_ties_count_zero():
    seqs, starts = [[0, 1], [0, 2], [0, 3]], [1, 1, 1]
    # the model prefers token 1 (logit 4), then 2 (logit 1); 3 is unlikely (-3)
    r = lm.sequence_stats(Fixed([0.0, 4.0, 1.0, -3.0]), seqs, starts, 0, want_agreement=True)
    assert r["margin"].tolist() == pytest.approx([3.0, -3.0, -7.0])  # given - best other
    assert r["regret"].tolist() == pytest.approx([0.0, 3.0, 7.0])  # best - given
    # an unsure model (logits close) gives a small negative margin for the same disagreement
    r2 = lm.sequence_stats(Fixed([0.0, 1.1, 1.0, -3.0]), seqs, starts, 0, want_agreement=True)
    assert r2["margin"][1] == pytest.approx(-0.1, abs=1e-5) and r2["margin"][1] > r["margin"][1]
    # a tie for the top: margin 0 and regret 0 for both tied tokens; greedy (argmax) takes the lower id
    r3 = lm.sequence_stats(Fixed([0.0, 2.0, 2.0, -3.0]), seqs, starts, 0, want_agreement=True)
    assert r3["margin"][:2].tolist() == [0.0, 0.0] and r3["regret"][:2].tolist() == [0.0, 0.0]
    assert r3["agree"][:2].tolist() == [1.0, 0.0]


@pytest.mark.slow  # a few hundred steps of a 260k-parameter model: a few seconds on one core
def test_memorised_answer_agrees_planted_wrong_one_does_not(shared_data):
    from curate.stages.common import finetune

    model_dir = shared_data("models", "stories260K")
    torch.set_num_threads(1)
    model, tok = lm.load_causal_lm(model_dir)
    prompts = ["User: Acronym of big red dog.\nAssistant: ", "User: Acronym of cold wet fish.\nAssistant: "]
    answers = ["BRD", "CWF"]
    finetune.fine_tune(model, tok, prompts * 8, answers * 8, epochs=40, lr=3e-3, batch_size=16)
    res = lm.score(model, tok, prompts * 3, answers + ["BD", "cwf", "BRDX", "CWF."], ifd=False,
                   want_agreement=True)
    assert res["agree"].tolist() == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0]  # memorised agree; a dropped letter,
    assert (res["token_acc"][:2] == 1.0).all() and (res["token_acc"][2:] < 1.0).all()  # case, extra: not
    # the memorised answers' worst token is top-1 (margin > 0, regret 0); the planted ones have
    # a token the model is confident of and the record is not (a large negative margin)
    assert (res["margin"][:2] > 0).all() and (res["regret"][:2] == 0).all()
    assert (res["margin"][2:] < -1.0).all() and (res["regret"][2:] > 0).all()
    # agreement = greedy decoding from the same prompt tokens reproduces the answer's tokens, then stops
    stop = tok.eos_token_id
    all_answers = answers + ["BD", "cwf", "BRDX", "CWF."]
    cond, starts, _, _ = lm.build_sequences(tok, prompts * 3, all_answers, 512)
    for seq, st, ag in zip(cond, starts, res["agree"]):
        ids = torch.tensor([seq[:st]])
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=len(seq) - st + 2,
                             do_sample=False, eos_token_id=stop, pad_token_id=stop)
        got = out[0, st:].tolist()[: len(seq) - st]
        assert (got == seq[st:]) == bool(ag), (tok.decode(seq[st:]), tok.decode(got))
