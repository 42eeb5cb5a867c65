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
