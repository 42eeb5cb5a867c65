#!/usr/bin/env python3
"""Regenerate curate's bundled sample data: a small tokenizer and a noisy multi-task raw set.

    python sample_data/make_sample_data.py            # writes beside this script
    python sample_data/make_sample_data.py --out DIR  # writes under DIR instead (tests use this)

Deterministic: every random choice comes from `random.Random` seeded with a fixed string, and
every file is written with fixed key order and no timestamps (gzip mtime=0), so two runs give
byte-identical files. Needs only the standard library and `tokenizers` (for the tokenizer).

What is planted where, and at which rate, is written to `defects.json` beside the data and
described in sample_data/README.md.
"""
from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent

# ---------------------------------------------------------------------------------------------
# Tokenizer
#
# FROZEN: other parts of the project (the sample base model, its shards' fingerprints) are
# built on these token ids. The corpus below is deliberately independent of the record
# generator further down, so the raw data can evolve without changing a single token id.
# Changing anything in this section changes tokenizer.json and invalidates those artefacts.
# ---------------------------------------------------------------------------------------------

TOKENIZER_SEED = "curate-sample-tokenizer-v1"
VOCAB_SIZE = 4096
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", "<|im_start|>", "<|im_end|>"]
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['role'] == 'assistant' %}"
    "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\\n' }}"
    "{% else %}{{ message['content'] + '<|im_end|>' + '\\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

_TOK_SUBJECTS = [
    "The teacher", "A small child", "My neighbour", "The old farmer", "Our team", "The doctor",
    "A young engineer", "The committee", "Every student", "The river", "The city council",
    "A curious cat", "The government", "The scientist", "Her brother", "The museum", "This book",
    "The company", "A traveller", "The weather", "The library", "Most people", "The market",
    "The train", "Your question", "The recipe", "The garden", "The report", "An old friend",
    "The children", "The orchestra", "A good answer", "The computer", "The program", "The model",
]
_TOK_VERBS = [
    "explains", "describes", "remembers", "builds", "visits", "opens", "writes", "reads",
    "carries", "changes", "follows", "finds", "needs", "shows", "protects", "measures",
    "improves", "closes", "answers", "counts", "prepares", "teaches", "collects", "reaches",
    "suggests", "repairs", "compares", "summarises", "translates", "returns", "covers",
]
_TOK_OBJECTS = [
    "the history of the town", "a simple solution", "the main idea", "every detail",
    "the north bridge", "a long letter", "the new schedule", "the results of the test",
    "a cup of tea", "the price of bread", "the meaning of the word", "a short story",
    "the first chapter", "the best route", "a warm coat", "the evening news", "the data",
    "the size of the room", "a list of numbers", "the capital city", "the temperature",
    "a careful plan", "the difference between them", "the missing piece", "the old map",
    "the function", "the error message", "the final answer", "the weekly meeting",
]
_TOK_TAILS = [
    "before the rain starts", "after a long day", "with great care", "in the morning",
    "every summer", "without any help", "for the first time", "at the end of the week",
    "because it matters", "when nobody is watching", "as quickly as possible", "near the station",
    "during the holidays", "in a few words", "step by step", "once again", "on Monday",
    "in 1998", "by 3 p.m.", "for about 20 minutes", "at least twice", "in the north of the country",
]
_TOK_CONNECTORS = ["However,", "Then", "Later,", "In addition,", "Finally,", "Meanwhile,",
                   "For example,", "Because of this,", "Still,", "As a result,", "Of course,"]
_TOK_QUESTIONS = [
    "What is the capital of {}?", "How many {} are there in a {}?", "Why does {} happen?",
    "Can you explain {} in simple terms?", "Who wrote {}?", "When did {} begin?",
    "Summarize the following text.", "Translate this sentence into {}.",
    "Write a Python function that {}.", "What does the word \"{}\" mean?",
]
_TOK_FILLERS = [
    "France", "Japan", "Brazil", "Kenya", "Canada", "Norway", "Egypt", "Peru", "India",
    "minutes", "hour", "metres", "kilometre", "grams", "kilogram", "seconds", "day",
    "photosynthesis", "inflation", "gravity", "erosion", "a rainbow", "the tide",
    "French", "German", "Spanish", "English", "returns the sum of a list",
    "reverses a string", "checks whether a number is prime", "ephemeral", "resilient",
]
# Real sentences in the other languages the sample data uses (translations, wrong-language
# answers), so their common subwords get merges too.
_TOK_FOREIGN = [
    "Je voudrais un café, s'il vous plaît.", "Où se trouve la gare la plus proche ?",
    "Il fait très beau aujourd'hui.", "Nous avons visité le musée hier après-midi.",
    "La réponse à cette question est simple.", "Je ne sais pas pourquoi il est parti.",
    "Les enfants jouent dans le jardin.", "Merci beaucoup pour votre aide.",
    "Ich möchte bitte ein Glas Wasser.", "Wo ist der nächste Bahnhof?",
    "Das Wetter ist heute sehr schön.", "Wir haben gestern das Museum besucht.",
    "Die Antwort auf diese Frage ist einfach.", "Die Kinder spielen im Garten.",
    "Vielen Dank für Ihre Hilfe.", "Ich weiß nicht, warum er gegangen ist.",
    "Quisiera un café, por favor.", "¿Dónde está la estación más cercana?",
    "Hoy hace muy buen tiempo.", "Ayer visitamos el museo por la tarde.",
    "La respuesta a esta pregunta es sencilla.", "Los niños juegan en el jardín.",
    "Muchas gracias por su ayuda.", "No sé por qué se fue.",
    "今天天气很好。", "这个问题的答案很简单。", "我们昨天参观了博物馆。", "谢谢你的帮助。",
]
_TOK_CODE = [
    "def add(a, b):\n    return a + b\n",
    "def is_prime(n: int) -> bool:\n    if n < 2:\n        return False\n"
    "    for i in range(2, int(n ** 0.5) + 1):\n        if n % i == 0:\n            return False\n"
    "    return True\n",
    "def reverse_string(s: str) -> str:\n    return s[::-1]\n",
    "for item in items:\n    print(item)\n",
    "result = [x * x for x in range(10) if x % 2 == 0]\n",
    "import json\n\nwith open(path, encoding=\"utf-8\") as f:\n    data = json.load(f)\n",
    "class Counter:\n    def __init__(self):\n        self.count = 0\n\n"
    "    def increment(self):\n        self.count += 1\n",
    "def factorial(n):\n    return 1 if n <= 1 else n * factorial(n - 1)\n",
    "while left < right:\n    mid = (left + right) // 2\n",
    "try:\n    value = int(text)\nexcept ValueError:\n    value = None\n",
]
_TOK_CHAT = [
    "Sure! Here is the answer.", "Thank you, that helps a lot.", "Could you give me an example?",
    "Of course. Let me explain.", "I hope this helps!", "Is there anything else I can do?",
    "Hi! How are you today?", "I'm fine, thanks. And you?", "Please write a short summary.",
    "Contact me at jane.doe@example.com or call +1 555 0100.",
    "As an AI language model, I cannot do that.", "N/A", "<noinput>",
]

# A general English vocabulary, mixed into free-form word sequences so the merges cover more
# than the sentence grammar above.
_TOK_WORDS = (
    "about above across act add afraid after afternoon again against age ago "
    "agree air all allow almost alone along already also although always among "
    "amount ancient angry animal another answer any anyone anything appear apple area "
    "argue arm army around arrive art article ask assistant attack attention aunt "
    "autumn average away baby back bad bag ball bank base basket bath "
    "beach bean bear beautiful because become bed beef before begin behind believe "
    "bell belong below belt bench beside best better between bicycle big bird "
    "birth bit bitter black blade blood blow blue board boat body boil "
    "bone book border born borrow both bottle bottom bowl box boy brain "
    "branch brave bread break breakfast breath brick bridge bright bring broad brother "
    "brown brush bucket build burn bus business busy butter button buy cake "
    "calculate call calm camera camp can candle cap capital car card care "
    "careful carpet carry case castle catch cause ceiling cell center century certain "
    "chain chair chalk chance change chapter cheap check cheese chemical chest chicken "
    "chief child choice choose church circle citizen city claim class clean clear "
    "clever climate climb clock close cloth cloud coast coat code coffee coin "
    "cold collect college colour column comb come comfort common company compare complete "
    "computer condition connect consider contain continue control cook cool copper copy corner "
    "correct cost cotton cough country course cousin cover cow crack create credit "
    "crime crop cross crowd cruel cry culture cup current curtain curve cushion "
    "customer cut damage dance danger dark daughter day dead deal dear death "
    "debt decide decision deep defend degree delay deliver demand depend describe desert "
    "design desk destroy detail develop device dictionary different difficult dinner direction dirty "
    "discover discuss disease dish distance divide doctor document dog dollar door double "
    "doubt down dozen drawer dream dress drink drive drop dry duck during "
    "dust duty early earn earth east easy eat economy edge education effect "
    "effort egg eight either elbow election electric element else empty end enemy "
    "energy engine enjoy enough enter equal error escape evening event ever every "
    "exact example except exchange exercise expect expensive experience expert explain express extra "
    "eye face fact factory fail fair fall false family famous far farm "
    "fast father fault fear feather feature feed feel female fence festival fever "
    "few field fight figure file fill film final find fine finger finish "
    "fire first fish fit five fix flag flat flight floor flour flower "
    "fly fold follow food foot force foreign forest forget fork form forward "
    "four frame free fresh friend frog front fruit full function funny future "
    "game garden gate general gentle gift girl give glad glass glove goal "
    "gold good govern grain grammar grass great green grey ground group grow "
    "guard guess guest guide gun habit hair half hall hammer hand happen "
    "happy hard hat hate head health hear heart heat heavy help here "
    "high hill history hold hole holiday home honest hope horse hospital hot "
    "hotel hour house however huge human humour hundred hungry hurry hurt husband "
    "idea ill image important improve include income increase industry inform insect inside "
    "instead instrument interest invent iron island issue jacket job join journey judge "
    "juice jump just keep key kick kind king kitchen knee knife know "
    "knowledge labour lady lake lamp land language large last late laugh law "
    "lazy lead leaf learn least leather leave left leg lemon length lesson "
    "letter level library lie life lift light like limit line lion lip "
    "liquid list listen little live loan local lock long look loose lose "
    "loud love low luck lunch machine main make male manage manner many "
    "map mark market marry material matter meal mean measure meat medicine meet "
    "member memory mention message metal method middle milk mind minute mirror miss "
    "mistake mix model modern moment money monkey month moon morning mother motion "
    "mountain mouth move much music nail name narrow nation natural nature near "
    "neck need needle neither nerve never new news next nice night nine "
    "noble noise none normal north nose note nothing notice number nurse object "
    "observe ocean offer office often oil old once only open operation opinion "
    "orange order ordinary organ other outside oven over owner page pain paint "
    "pair paper parcel parent park part party pass past path patient pattern "
    "pay peace pen pencil people pepper perfect period person picture piece pig "
    "pin pink pipe place plain plan plane plant plate play please pleasure "
    "plenty pocket poem point poison police polite pool poor popular position possible "
    "post pot potato pound powder power practice prepare present press pretty price "
    "print prison private prize problem process produce profit promise proper protect proud "
    "provide public pull pump punish pupil purpose push quality quarter queen question "
    "quick quiet quite rabbit race radio rail rain raise range rate rather "
    "reach read ready real reason receive record red reduce region regular relation "
    "religion remain remember remove rent repeat reply report request rest result return "
    "reward rice rich ride right ring rise risk river road rock roll "
    "roof room root rope rough round row rule run sad safe sail "
    "salt same sand save say scale school science scissors screen sea search "
    "season seat second secret see seed seem sell send sense sentence separate "
    "serious servant serve service seven shade shake shape share sharp sheep shelf "
    "shell shine ship shirt shock shoe shop short shoulder shout show shut "
    "side sign signal silk silver simple since sing single sister sit six "
    "size skill skin skirt sky sleep slope slow small smell smile smoke "
    "smooth snake snow soap society sock soft soil soldier solid solution son "
    "song soon sorry sort sound soup south space speak special speed spell "
    "spend spoon sport spring square stage stair stamp stand star start station "
    "stay steam steel step stick still stomach stone stop store storm story "
    "straight strange street strength string strong student study subject substance sudden sugar "
    "suit summer sun supply support surface surprise sweet swim system table tail "
    "take talk tall taste tax teach tear telephone tell ten tent term "
    "test thank theory thick thin thing think third thirsty thought thread three "
    "throat through throw thumb ticket tidy tight time tired title today together "
    "tomorrow tongue tool tooth top total touch towel tower town toy trade "
    "traffic travel tree trick trouble trousers true trust try turn twelve twenty "
    "twice type ugly umbrella uncle under understand unit until upon upper use "
    "useful user usual valley value vegetable very village visit voice vote wage "
    "wait walk wall want war warm wash waste watch water wave way "
    "weak wealth wear week weight welcome well west wet wheel where while "
    "whip whistle white whole wide wife wild will win wind window wine "
    "wing winter wire wise wish woman wonder wood wool word work world "
    "worry wound write wrong yard year yellow yesterday young zero "
).split()


def tokenizer_corpus() -> list[str]:
    """General English generated from small phrase tables, plus foreign sentences, code and
    chat phrases: enough varied text for a 4k byte-level BPE, made in well under a second."""
    rng = random.Random(TOKENIZER_SEED)
    lines: list[str] = []
    for _ in range(6000):
        n = rng.randint(1, 4)
        sents = []
        for j in range(n):
            s = f"{rng.choice(_TOK_SUBJECTS)} {rng.choice(_TOK_VERBS)} {rng.choice(_TOK_OBJECTS)}"
            if rng.random() < 0.6:
                s += " " + rng.choice(_TOK_TAILS)
            s += rng.choice([".", ".", ".", "!", "?"]) if j == n - 1 else "."
            if j and rng.random() < 0.4:
                conn = rng.choice(_TOK_CONNECTORS)
                s = f"{conn} {s[0].lower()}{s[1:]}"
            sents.append(s)
        lines.append(" ".join(sents))
        if rng.random() < 0.3:
            q = rng.choice(_TOK_QUESTIONS)
            lines.append(q.format(*(rng.choice(_TOK_FILLERS) for _ in range(q.count("{}")))))
        if rng.random() < 0.1:
            a, b = rng.randint(0, 9999), rng.randint(0, 999)
            lines.append(f"{a} + {b} = {a + b}; {a} x {b} = {a * b}; {a / max(b, 1):.2f}")
    for _ in range(4000):
        words = [rng.choice(_TOK_WORDS) for _ in range(rng.randint(6, 18))]
        words[0] = words[0].capitalize()
        lines.append(" ".join(words) + rng.choice([".", ".", "?", "!", ",", ";"]))
    for _ in range(300):
        role = rng.choice(["user", "assistant", "system", "tool"])
        lines.append(f"{role}\n{rng.choice(_TOK_CHAT)}")
    for _ in range(30):
        lines.extend(_TOK_FOREIGN)
        lines.extend(_TOK_CODE)
        lines.extend(_TOK_CHAT)
    return lines


def build_tokenizer(out_dir: Path) -> list[Path]:
    """Train a byte-level BPE on `tokenizer_corpus()` and write a Hugging Face tokenizer folder.

    tokenizer_config.json is written by hand (not by transformers' save_pretrained) so the
    bytes do not depend on the transformers version installed. BOS is prepended on plain
    encoding (Llama-style); chat templates are tokenised without it, as apply_chat_template does."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(tokenizer_corpus(), trainer=trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single="<s> $A", pair="<s> $A <s>:1 $B:1", special_tokens=[("<s>", bos)]
            ),
        ]
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    tok_path = out_dir / "tokenizer.json"
    tok.save(str(tok_path), pretty=False)
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "pad_token": "<pad>",
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
        "model_max_length": 2048,
        "padding_side": "right",
        "clean_up_tokenization_spaces": False,
        "chat_template": CHATML_TEMPLATE,
    }
    cfg_path = out_dir / "tokenizer_config.json"
    cfg_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return [tok_path, cfg_path]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=HERE, help="output folder (default: beside this script)")
    ap.add_argument("--only", choices=["tokenizer", "data", "all"], default="all")
    args = ap.parse_args(argv)
    written: list[Path] = []
    if args.only in ("tokenizer", "all"):
        written += build_tokenizer(args.out / "tokenizer")
    for p in written:
        print(p)


if __name__ == "__main__":
    main()
