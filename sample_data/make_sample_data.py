#!/usr/bin/env python3
"""Regenerate curate's bundled sample data: a small tokenizer and a noisy multi-task raw set.

    python sample_data/make_sample_data.py            # writes beside this script
    python sample_data/make_sample_data.py --out DIR  # writes under DIR instead (tests use this)

Writes tokenizer/ (a 4096-token byte-level BPE with ChatML special tokens), raw/ (five files,
one per raw format and task), evalsets/sample_eval.jsonl (held-out questions, some of which
leak into raw/), and defects.json (every planted defect with its location).

Layout of this file: the tokenizer (frozen), content tables, one generator per task, the
defect planter, and `build_data`, which plants defects at fixed counts, writes the files
and the ground truth.

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


# ---------------------------------------------------------------------------------------------
# Raw data: content tables. Real facts and real sentences, so filters, language ID and
# decontamination behave on this data as they would on real data.
# ---------------------------------------------------------------------------------------------

DATA_SEED = "curate-sample-data-v1"

# country | capital | main language | continent
_CAPITALS = """
France|Paris|French|Europe
Germany|Berlin|German|Europe
Spain|Madrid|Spanish|Europe
Italy|Rome|Italian|Europe
Portugal|Lisbon|Portuguese|Europe
Netherlands|Amsterdam|Dutch|Europe
Belgium|Brussels|Dutch, French and German|Europe
Austria|Vienna|German|Europe
Switzerland|Bern|German, French, Italian and Romansh|Europe
Poland|Warsaw|Polish|Europe
Czechia|Prague|Czech|Europe
Hungary|Budapest|Hungarian|Europe
Greece|Athens|Greek|Europe
Sweden|Stockholm|Swedish|Europe
Norway|Oslo|Norwegian|Europe
Denmark|Copenhagen|Danish|Europe
Finland|Helsinki|Finnish and Swedish|Europe
Ireland|Dublin|English and Irish|Europe
Romania|Bucharest|Romanian|Europe
Bulgaria|Sofia|Bulgarian|Europe
Croatia|Zagreb|Croatian|Europe
Serbia|Belgrade|Serbian|Europe
Ukraine|Kyiv|Ukrainian|Europe
Japan|Tokyo|Japanese|Asia
China|Beijing|Mandarin Chinese|Asia
India|New Delhi|Hindi and English|Asia
South Korea|Seoul|Korean|Asia
Thailand|Bangkok|Thai|Asia
Vietnam|Hanoi|Vietnamese|Asia
Indonesia|Jakarta|Indonesian|Asia
Philippines|Manila|Filipino and English|Asia
Pakistan|Islamabad|Urdu and English|Asia
Iran|Tehran|Persian|Asia
Turkey|Ankara|Turkish|Asia
Saudi Arabia|Riyadh|Arabic|Asia
Nepal|Kathmandu|Nepali|Asia
Mongolia|Ulaanbaatar|Mongolian|Asia
Egypt|Cairo|Arabic|Africa
Kenya|Nairobi|Swahili and English|Africa
Nigeria|Abuja|English|Africa
Ghana|Accra|English|Africa
Ethiopia|Addis Ababa|Amharic|Africa
Morocco|Rabat|Arabic and Berber|Africa
Senegal|Dakar|French|Africa
Tanzania|Dodoma|Swahili and English|Africa
Canada|Ottawa|English and French|North America
Mexico|Mexico City|Spanish|North America
Cuba|Havana|Spanish|North America
Jamaica|Kingston|English|North America
Brazil|Brasilia|Portuguese|South America
Argentina|Buenos Aires|Spanish|South America
Chile|Santiago|Spanish|South America
Peru|Lima|Spanish|South America
Colombia|Bogota|Spanish|South America
Venezuela|Caracas|Spanish|South America
Uruguay|Montevideo|Spanish|South America
Australia|Canberra|English|Oceania
New Zealand|Wellington|English and Maori|Oceania
Fiji|Suva|English, Fijian and Hindi|Oceania
"""
# Held out of the training facts; only the eval set asks about these.
_EVAL_CAPITALS = """
Iceland|Reykjavik|Icelandic|Europe
Estonia|Tallinn|Estonian|Europe
Latvia|Riga|Latvian|Europe
Lithuania|Vilnius|Lithuanian|Europe
Slovakia|Bratislava|Slovak|Europe
Slovenia|Ljubljana|Slovene|Europe
Malaysia|Kuala Lumpur|Malay|Asia
Bangladesh|Dhaka|Bengali|Asia
Sri Lanka|Colombo|Sinhala and Tamil|Asia
Uganda|Kampala|English and Swahili|Africa
Zambia|Lusaka|English|Africa
Bolivia|Sucre|Spanish|South America
Ecuador|Quito|Spanish|South America
Paraguay|Asuncion|Spanish and Guarani|South America
Panama|Panama City|Spanish|North America
"""

# word | definition
_DEFINITIONS = """
photosynthesis|the process by which green plants use sunlight, water and carbon dioxide to make glucose and release oxygen
evaporation|the change of a liquid into a gas at a temperature below its boiling point
democracy|a system of government in which citizens choose their leaders through free elections
inflation|a general rise in prices over time, which reduces what a unit of money can buy
gravity|the force by which objects with mass attract one another
ecosystem|a community of living things together with the physical environment they interact with
metaphor|a figure of speech that describes something by saying it is something else
algorithm|a finite sequence of well-defined steps for solving a problem or performing a computation
erosion|the gradual wearing away of rock or soil by water, wind or ice
mammal|a warm-blooded animal that has hair or fur and feeds its young with milk
volcano|an opening in the earth's crust through which molten rock, ash and gases escape
atom|the smallest unit of a chemical element that keeps the properties of that element
biodiversity|the variety of plant and animal life in a particular habitat or in the world as a whole
budget|a plan that estimates income and spending over a period of time
climate|the average weather conditions of a region over a long period
friction|the force that resists the motion of one surface sliding over another
hypothesis|a proposed explanation that can be tested by further investigation
migration|the seasonal movement of animals from one region to another
osmosis|the movement of water through a membrane from a less concentrated solution to a more concentrated one
peninsula|a piece of land almost surrounded by water but connected to the mainland
recession|a significant decline in economic activity that lasts for several months
satire|the use of humour, irony or exaggeration to criticise people or ideas
tariff|a tax imposed by a government on imported or exported goods
vaccine|a substance that trains the immune system to recognise and fight a specific disease
glacier|a slowly moving mass of ice formed from snow that has built up over many years
compiler|a program that translates source code written in a programming language into machine code
protein|a large molecule made of chains of amino acids that does most of the work in cells
renewable energy|energy from sources that are naturally replenished, such as sunlight, wind and flowing water
allegory|a story in which characters and events stand for abstract ideas or moral qualities
catalyst|a substance that speeds up a chemical reaction without being consumed by it
delta|a landform at the mouth of a river where sediment is deposited as the river enters a larger body of water
empathy|the ability to understand and share the feelings of another person
fossil|the preserved remains or traces of an organism that lived in the distant past
habitat|the natural home or environment of an animal, plant or other organism
irony|the expression of meaning by using language that normally signifies the opposite
latitude|the distance of a place north or south of the equator, measured in degrees
monopoly|a market in which a single company is the only supplier of a product or service
nucleus|the central part of an atom, made of protons and neutrons, or the control centre of a cell
opportunity cost|the value of the best alternative that is given up when a choice is made
precipitation|water that falls from clouds to the ground as rain, snow, sleet or hail
quarantine|a period of isolation used to prevent the spread of a contagious disease
refraction|the bending of light as it passes from one medium into another
sediment|particles of rock, sand or soil that are carried by water or wind and settle somewhere
thermometer|an instrument that measures temperature
urbanisation|the growth of towns and cities as people move from rural areas
velocity|the speed of something in a given direction
watershed|an area of land that drains rain and snow into a particular river or lake
encryption|the process of converting information into a code to prevent unauthorised access
bandwidth|the maximum rate at which data can be transferred over a network connection
recursion|a technique in which a function solves a problem by calling itself on smaller instances
"""

# title | author | year
_BOOKS = """
Pride and Prejudice|Jane Austen|1813
Nineteen Eighty-Four|George Orwell|1949
To Kill a Mockingbird|Harper Lee|1960
Moby-Dick|Herman Melville|1851
War and Peace|Leo Tolstoy|1869
The Great Gatsby|F. Scott Fitzgerald|1925
Don Quixote|Miguel de Cervantes|1605
Jane Eyre|Charlotte Bronte|1847
Frankenstein|Mary Shelley|1818
The Odyssey|Homer|the 8th century BC
Crime and Punishment|Fyodor Dostoevsky|1866
One Hundred Years of Solitude|Gabriel Garcia Marquez|1967
The Catcher in the Rye|J. D. Salinger|1951
Brave New World|Aldous Huxley|1932
The Hobbit|J. R. R. Tolkien|1937
Les Miserables|Victor Hugo|1862
Madame Bovary|Gustave Flaubert|1857
The Little Prince|Antoine de Saint-Exupery|1943
Great Expectations|Charles Dickens|1861
Wuthering Heights|Emily Bronte|1847
"""
_EVAL_BOOKS = """
The Trial|Franz Kafka|1925
Middlemarch|George Eliot|1871
Things Fall Apart|Chinua Achebe|1958
The Grapes of Wrath|John Steinbeck|1939
Anna Karenina|Leo Tolstoy|1878
Dracula|Bram Stoker|1897
"""

# element | symbol | atomic number
_ELEMENTS = """
Hydrogen|H|1
Helium|He|2
Lithium|Li|3
Carbon|C|6
Nitrogen|N|7
Oxygen|O|8
Fluorine|F|9
Neon|Ne|10
Sodium|Na|11
Magnesium|Mg|12
Aluminium|Al|13
Silicon|Si|14
Phosphorus|P|15
Sulfur|S|16
Chlorine|Cl|17
Potassium|K|19
Calcium|Ca|20
Iron|Fe|26
Copper|Cu|29
Zinc|Zn|30
Silver|Ag|47
Tin|Sn|50
Iodine|I|53
Gold|Au|79
Mercury|Hg|80
Lead|Pb|82
Uranium|U|92
"""
_EVAL_ELEMENTS = """
Argon|Ar|18
Nickel|Ni|28
Platinum|Pt|78
Tungsten|W|74
Titanium|Ti|22
"""

# word | antonym | synonym
_WORDS = """
happy|sad|cheerful
big|small|large
fast|slow|quick
ancient|modern|old
brave|cowardly|courageous
generous|selfish|giving
difficult|easy|hard
bright|dim|shining
wealthy|poor|rich
accept|reject|receive
begin|end|start
increase|decrease|grow
polite|rude|courteous
calm|anxious|peaceful
strong|weak|powerful
narrow|wide|thin
honest|dishonest|truthful
frequent|rare|common
loud|quiet|noisy
victory|defeat|triumph
expand|shrink|enlarge
visible|invisible|apparent
fragile|sturdy|delicate
ancestor|descendant|forebear
arrive|depart|reach
"""

# (from unit, to unit, factor, decimals)
_UNITS = [
    ("kilometres", "miles", 0.621371, 2), ("miles", "kilometres", 1.609344, 2),
    ("kilograms", "pounds", 2.204623, 2), ("pounds", "kilograms", 0.453592, 2),
    ("metres", "feet", 3.28084, 2), ("feet", "metres", 0.3048, 2),
    ("litres", "US gallons", 0.264172, 2), ("inches", "centimetres", 2.54, 2),
    ("hours", "minutes", 60, 0), ("days", "hours", 24, 0), ("minutes", "seconds", 60, 0),
    ("kilobytes", "bytes", 1024, 0), ("tonnes", "kilograms", 1000, 0),
]

# Real sentences with real translations: English | French | German | Spanish.
_PHRASES = """
Good morning, how are you?|Bonjour, comment allez-vous ?|Guten Morgen, wie geht es Ihnen?|Buenos días, ¿cómo está usted?
Where is the train station?|Où est la gare ?|Wo ist der Bahnhof?|¿Dónde está la estación de tren?
I would like a cup of coffee, please.|Je voudrais une tasse de café, s'il vous plaît.|Ich hätte gern eine Tasse Kaffee, bitte.|Quisiera una taza de café, por favor.
The weather is beautiful today.|Il fait beau aujourd'hui.|Das Wetter ist heute schön.|Hoy hace buen tiempo.
My brother lives in a small village.|Mon frère habite dans un petit village.|Mein Bruder wohnt in einem kleinen Dorf.|Mi hermano vive en un pueblo pequeño.
We are going to the beach tomorrow.|Nous allons à la plage demain.|Wir fahren morgen an den Strand.|Mañana vamos a la playa.
How much does this book cost?|Combien coûte ce livre ?|Wie viel kostet dieses Buch?|¿Cuánto cuesta este libro?
The children are playing in the garden.|Les enfants jouent dans le jardin.|Die Kinder spielen im Garten.|Los niños juegan en el jardín.
I do not understand the question.|Je ne comprends pas la question.|Ich verstehe die Frage nicht.|No entiendo la pregunta.
Thank you very much for your help.|Merci beaucoup pour votre aide.|Vielen Dank für Ihre Hilfe.|Muchas gracias por su ayuda.
The museum opens at nine o'clock.|Le musée ouvre à neuf heures.|Das Museum öffnet um neun Uhr.|El museo abre a las nueve.
She reads a newspaper every morning.|Elle lit un journal tous les matins.|Sie liest jeden Morgen eine Zeitung.|Ella lee un periódico todas las mañanas.
Can you help me, please?|Pouvez-vous m'aider, s'il vous plaît ?|Können Sie mir bitte helfen?|¿Puede ayudarme, por favor?
The restaurant is closed on Mondays.|Le restaurant est fermé le lundi.|Das Restaurant ist montags geschlossen.|El restaurante está cerrado los lunes.
I have been learning French for two years.|J'apprends le français depuis deux ans.|Ich lerne seit zwei Jahren Französisch.|Llevo dos años aprendiendo francés.
The water in the lake is very cold.|L'eau du lac est très froide.|Das Wasser im See ist sehr kalt.|El agua del lago está muy fría.
Our flight leaves at seven in the evening.|Notre vol part à sept heures du soir.|Unser Flug geht um sieben Uhr abends.|Nuestro vuelo sale a las siete de la tarde.
He forgot his umbrella at the office.|Il a oublié son parapluie au bureau.|Er hat seinen Regenschirm im Büro vergessen.|Olvidó su paraguas en la oficina.
The bakery sells fresh bread every day.|La boulangerie vend du pain frais tous les jours.|Die Bäckerei verkauft jeden Tag frisches Brot.|La panadería vende pan fresco todos los días.
My grandmother tells wonderful stories.|Ma grand-mère raconte des histoires merveilleuses.|Meine Großmutter erzählt wunderbare Geschichten.|Mi abuela cuenta historias maravillosas.
The meeting has been moved to Thursday.|La réunion a été déplacée à jeudi.|Die Besprechung wurde auf Donnerstag verschoben.|La reunión se ha cambiado al jueves.
Please close the window, it is cold.|Fermez la fenêtre, s'il vous plaît, il fait froid.|Bitte schließen Sie das Fenster, es ist kalt.|Por favor, cierre la ventana, hace frío.
I need a room for two nights.|J'ai besoin d'une chambre pour deux nuits.|Ich brauche ein Zimmer für zwei Nächte.|Necesito una habitación para dos noches.
The cat is sleeping on the sofa.|Le chat dort sur le canapé.|Die Katze schläft auf dem Sofa.|El gato duerme en el sofá.
We visited the castle last summer.|Nous avons visité le château l'été dernier.|Wir haben letzten Sommer das Schloss besucht.|Visitamos el castillo el verano pasado.
The doctor will see you in ten minutes.|Le médecin va vous recevoir dans dix minutes.|Der Arzt wird Sie in zehn Minuten empfangen.|El médico le atenderá en diez minutos.
This street is very busy in the afternoon.|Cette rue est très animée l'après-midi.|Diese Straße ist am Nachmittag sehr belebt.|Esta calle tiene mucho tráfico por la tarde.
I lost my keys yesterday.|J'ai perdu mes clés hier.|Ich habe gestern meine Schlüssel verloren.|Ayer perdí mis llaves.
The library is next to the post office.|La bibliothèque est à côté de la poste.|Die Bibliothek ist neben der Post.|La biblioteca está al lado de correos.
They are building a new bridge over the river.|Ils construisent un nouveau pont sur la rivière.|Sie bauen eine neue Brücke über den Fluss.|Están construyendo un puente nuevo sobre el río.
Do you speak English?|Parlez-vous anglais ?|Sprechen Sie Englisch?|¿Habla usted inglés?
The soup needs a little more salt.|La soupe a besoin d'un peu plus de sel.|Die Suppe braucht etwas mehr Salz.|A la sopa le falta un poco de sal.
My sister is a nurse at the hospital.|Ma sœur est infirmière à l'hôpital.|Meine Schwester ist Krankenschwester im Krankenhaus.|Mi hermana es enfermera en el hospital.
The bus is late again this morning.|Le bus est encore en retard ce matin.|Der Bus hat heute Morgen wieder Verspätung.|El autobús vuelve a llegar tarde esta mañana.
I would like to book a table for four people.|Je voudrais réserver une table pour quatre personnes.|Ich möchte einen Tisch für vier Personen reservieren.|Quisiera reservar una mesa para cuatro personas.
The shop on the corner sells fruit and vegetables.|Le magasin du coin vend des fruits et des légumes.|Der Laden an der Ecke verkauft Obst und Gemüse.|La tienda de la esquina vende fruta y verdura.
Winter is my favourite season.|L'hiver est ma saison préférée.|Der Winter ist meine Lieblingsjahreszeit.|El invierno es mi estación favorita.
He plays the piano very well.|Il joue très bien du piano.|Er spielt sehr gut Klavier.|Toca muy bien el piano.
We must finish this project by Friday.|Nous devons terminer ce projet avant vendredi.|Wir müssen dieses Projekt bis Freitag abschließen.|Tenemos que terminar este proyecto antes del viernes.
The mountains are covered with snow.|Les montagnes sont couvertes de neige.|Die Berge sind mit Schnee bedeckt.|Las montañas están cubiertas de nieve.
Where can I buy a ticket?|Où puis-je acheter un billet ?|Wo kann ich eine Fahrkarte kaufen?|¿Dónde puedo comprar un billete?
My phone battery is almost empty.|La batterie de mon téléphone est presque vide.|Mein Handyakku ist fast leer.|La batería de mi teléfono está casi vacía.
The teacher explained the lesson again.|Le professeur a expliqué la leçon encore une fois.|Der Lehrer hat die Lektion noch einmal erklärt.|El profesor volvió a explicar la lección.
It is too expensive for me.|C'est trop cher pour moi.|Das ist mir zu teuer.|Es demasiado caro para mí.
The film starts at half past eight.|Le film commence à huit heures et demie.|Der Film beginnt um halb neun.|La película empieza a las ocho y media.
I drink tea without sugar.|Je bois du thé sans sucre.|Ich trinke Tee ohne Zucker.|Bebo té sin azúcar.
The garden is full of flowers in spring.|Le jardin est plein de fleurs au printemps.|Im Frühling ist der Garten voller Blumen.|En primavera el jardín está lleno de flores.
Our neighbours have two dogs.|Nos voisins ont deux chiens.|Unsere Nachbarn haben zwei Hunde.|Nuestros vecinos tienen dos perros.
The hotel is near the old town.|L'hôtel est près de la vieille ville.|Das Hotel liegt in der Nähe der Altstadt.|El hotel está cerca del casco antiguo.
I am looking for a pharmacy.|Je cherche une pharmacie.|Ich suche eine Apotheke.|Estoy buscando una farmacia.
"""

# Fluent answers in the wrong language for English questions (real sentences, so a
# language identifier sees them as what they are).
_WRONG_LANGUAGE = {
    "fr": [
        "Je pense que la réponse dépend du contexte, mais en général il faut vérifier les sources avant de conclure.",
        "C'est une question intéressante. La plupart des spécialistes considèrent que cette explication est la plus simple et la plus juste.",
        "Pour répondre à votre question, il faut d'abord comprendre comment fonctionne le système dans son ensemble.",
        "La réponse courte est oui, mais il existe plusieurs exceptions importantes que nous devons examiner ensemble.",
    ],
    "de": [
        "Ich glaube, die Antwort hängt vom Zusammenhang ab, aber im Allgemeinen sollte man die Quellen zuerst prüfen.",
        "Das ist eine gute Frage. Die meisten Fachleute halten diese Erklärung für die einfachste und genaueste.",
        "Um Ihre Frage zu beantworten, muss man zuerst verstehen, wie das ganze System funktioniert.",
        "Die kurze Antwort lautet ja, aber es gibt einige wichtige Ausnahmen, die wir gemeinsam betrachten sollten.",
    ],
    "es": [
        "Creo que la respuesta depende del contexto, pero en general conviene comprobar las fuentes antes de sacar conclusiones.",
        "Es una pregunta interesante. La mayoría de los expertos considera que esta explicación es la más sencilla y precisa.",
        "Para responder a su pregunta, primero hay que entender cómo funciona el sistema en su conjunto.",
    ],
    "zh": [
        "我认为答案取决于具体情况，但一般来说，在得出结论之前应该先核实资料来源。",
        "这是一个很好的问题。大多数专家认为这种解释是最简单也是最准确的。",
        "要回答你的问题，首先需要了解整个系统是如何运作的。",
    ],
}

_REFUSALS = [
    "As an AI language model, I cannot provide personal opinions or answer this question.",
    "As an AI language model, I don't have the ability to do that. Please consult a reliable source.",
    "I'm sorry, but as an AI language model I cannot help with this request.",
    "I'm sorry, but I can't assist with that.",
    "As an AI, I do not have access to that information and cannot answer your question.",
    "I apologize, but I am unable to fulfill this request as it goes against my programming.",
    "As a large language model trained by OpenAI, I cannot browse the internet or give that answer.",
    "I cannot answer that. Is there anything else I can help you with?",
]
_PLACEHOLDERS = ["N/A", "n/a", "None", "TODO", "...", "null", "-", "No answer", "<noanswer>", "?"]
_NOINPUT = ["<noinput>", "N/A", "none", "No input", "<no input>", ""]
_EMAILS = ["jane.doe@example.com", "m.rossi@example.org", "k.tanaka@example.net", "support@acme-example.com",
           "john.smith1984@example.com", "li.wei@example.cn"]
_PHONES = ["+1 555 0100 2233", "(555) 013-4477", "+44 20 7946 0958", "555-0199", "+33 1 23 45 67 89"]
_CARDS = ["4111 1111 1111 1111", "4111-1111-1111-1111", "5555 5555 5555 4444", "378282246310005"]
_IPS = ["192.168.0.17", "10.0.0.42", "203.0.113.9"]

def _table(text: str) -> list[list[str]]:
    return [line.split("|") for line in text.strip().splitlines()]


def _fmt(x: float, decimals: int) -> str:
    return f"{x:,.{decimals}f}" if decimals else f"{int(round(x)):,}"


_SYSTEMS = [
    "You are a helpful assistant.",
    "You are a knowledgeable tutor. Answer accurately and concisely.",
    "Answer the user's question briefly and correctly.",
    "You are a friendly assistant who explains things clearly.",
]
_NAMES = ["Tom", "Anna", "Ravi", "Sofia", "Kenji", "Amara", "Lucas", "Mei", "Omar", "Elena", "Jonas", "Priya",
          "Diego", "Fatima", "Liam", "Chloe", "Mateo", "Hana", "Samuel", "Zara"]


def gen_qa(rng: random.Random) -> list[dict]:
    """Alpaca-style QA records (instruction/input/output), every fact from the tables above."""
    out: list[dict] = []

    def add(instruction, output, inp="", **extra):
        out.append({"instruction": instruction, "input": inp, "output": output, **extra})

    caps = _table(_CAPITALS)
    rng.shuffle(caps)
    single, multi = caps[:42], caps[42:]
    for country, capital, lang, cont in single:
        q = rng.choice(["What is the capital of {c}?", "Name the capital city of {c}.", "Which city is the capital of {c}?"])
        a = rng.choice(["The capital of {c} is {k}.", "{k} is the capital of {c}.",
                        "The capital city of {c} is {k}, which is also its seat of government."])
        add(q.format(c=country), a.format(c=country, k=capital))
        q = rng.choice(["What language is mainly spoken in {c}?", "Which language do most people in {c} speak?"])
        add(q.format(c=country), f"The main language of {country} is {lang}.")
        add(f"On which continent is {country}?", rng.choice([f"{country} is in {cont}.", f"{country} is located in {cont}."]))
    for country, capital, lang, cont in multi:
        # Multi-turn via Alpaca's `history`: earlier turns as [instruction, output] pairs.
        add("And which language do people mainly speak there?", f"Most people in {country} speak {lang}.",
            history=[[f"What is the capital of {country}?", f"The capital of {country} is {capital}."]])
    for word, definition in _table(_DEFINITIONS):
        q = rng.choice(['What does "{w}" mean?', "Define {w}.", "Explain the term {w} in one sentence.",
                        "What is {w}?"])
        a = rng.choice(["{W} is {d}.", 'The term "{w}" refers to {d}.', "{W}: {d}."])
        add(q.format(w=word), a.format(w=word, W=word[0].upper() + word[1:], d=definition))
    for title, author, year in _table(_BOOKS):
        add(rng.choice(["Who wrote {t}?", "Who is the author of {t}?"]).format(t=title), f"{title} was written by {author}.")
        add(f"When was {title} first published?", f"{title} was first published in {year}.")
    for name, sym, num in _table(_ELEMENTS):
        add(f"What is the chemical symbol for {name.lower()}?", f"The chemical symbol for {name.lower()} is {sym}.")
        add(f"What is the atomic number of {name.lower()}?", f"{name} has atomic number {num}.")
    for word, ant, syn in _table(_WORDS):
        add(rng.choice(["What is the opposite of \"{w}\"?", "Give an antonym for the word \"{w}\"."]).format(w=word),
            f'The opposite of "{word}" is "{ant}".')
        add(rng.choice(["Give a synonym for \"{w}\".", "What is another word for \"{w}\"?"]).format(w=word),
            f'A synonym for "{word}" is "{syn}".')
    seen: set[str] = set()

    def fresh(key: str) -> bool:
        if key in seen:
            return False
        seen.add(key)
        return True

    while len([r for r in out if r.get("_kind") == "arith"]) < 300:
        a, b = rng.randint(2, 999), rng.randint(2, 99)
        op = rng.choice("+-*/")
        if not fresh(f"{a}{op}{b}"):
            continue
        if op == "+":
            q, r = rng.choice(["What is {a} + {b}?", "Add {a} and {b}.", "Calculate the sum of {a} and {b}."]), f"{a} + {b} = {a + b}."
        elif op == "-":
            q, r = rng.choice(["What is {a} - {b}?", "Subtract {b} from {a}.", "What is {a} minus {b}?"]), f"{a} - {b} = {a - b}."
        elif op == "*":
            q, r = rng.choice(["What is {a} times {b}?", "Multiply {a} by {b}.", "Calculate {a} x {b}."]), f"{a} x {b} = {a * b}."
        else:
            q = rng.choice(["What is {a} divided by {b}?", "Divide {a} by {b}."])
            r = f"{a} divided by {b} is {a // b} with remainder {a % b}." if a % b else f"{a} / {b} = {a // b}."
        add(q.format(a=a, b=b), r, _kind="arith")
    n_units = 0
    while n_units < 240:
        src, dst, factor, dec = rng.choice(_UNITS)
        x = rng.choice([rng.randint(1, 500), round(rng.uniform(0.5, 100), 1)])
        if not fresh(f"{src}{dst}{x}"):
            continue
        y = _fmt(x * factor, dec)
        if rng.random() < 0.5:
            add(f"Convert {x} {src} to {dst}.", rng.choice([f"{x} {src} is about {y} {dst}.", f"{x} {src} = {y} {dst}."]))
        else:
            add(f"Convert the following quantity to {dst}.", f"{x} {src} is approximately {y} {dst}.", inp=f"{x} {src}")
        n_units += 1
    n = 0
    while n < 110:
        p, base = rng.choice([5, 10, 12, 15, 20, 25, 30, 40, 50, 75]), rng.randint(2, 400) * 4
        if not fresh(f"{p}%{base}"):
            continue
        add(f"What is {p}% of {base}?", f"{p}% of {base} is {_fmt(base * p / 100, 1 if base * p % 100 else 0)}.")
        n += 1
    n = 0
    while n < 200:
        name = rng.choice(_NAMES)
        t = rng.randrange(5)
        if t == 0:
            a, b = rng.randint(2, 40), rng.randint(2, 40)
            q = f"{name} has {a} apples and buys {b} more. How many apples does {name} have now?"
            r = f"{name} has {a} + {b} = {a + b} apples now."
        elif t == 1:
            s, h = rng.choice([40, 60, 80, 90, 100, 120]), rng.randint(2, 9)
            q = f"A train travels at {s} km/h for {h} hours. How far does it go?"
            r = f"Distance = speed x time = {s} x {h} = {s * h} km."
        elif t == 2:
            per, m = rng.choice([6, 10, 12, 24]), rng.randint(20, 300)
            q = f"A box holds {per} eggs. How many boxes are needed to pack {m} eggs?"
            r = f"{m} / {per} = {m / per:.2f}, so {-(-m // per)} boxes are needed."
        elif t == 3:
            price, d = rng.randint(10, 200), rng.choice([10, 20, 25, 50])
            q = f"A jacket costs ${price} and is on sale for {d}% off. What is the sale price?"
            r = f"The discount is {_fmt(price * d / 100, 2)} dollars, so the sale price is ${_fmt(price * (100 - d) / 100, 2)}."
        else:
            w, h = rng.randint(2, 60), rng.randint(2, 60)
            if rng.random() < 0.5:
                q, r = f"A rectangle is {w} cm wide and {h} cm tall. What is its area?", f"Area = {w} x {h} = {w * h} square centimetres."
            else:
                q, r = f"A rectangle is {w} cm wide and {h} cm tall. What is its perimeter?", f"Perimeter = 2 x ({w} + {h}) = {2 * (w + h)} cm."
        if fresh(q):
            add(q, r)
            n += 1
    n = 0
    while n < 70:
        nums = [rng.randint(-50, 200) for _ in range(rng.randint(4, 8))]
        if not fresh(str(nums)):
            continue
        listed = ", ".join(map(str, nums))
        if rng.random() < 0.5:
            add("Sort the following numbers in ascending order.", ", ".join(map(str, sorted(nums))), inp=listed)
        else:
            add("Which is the largest number in this list?", f"The largest number is {max(nums)}.", inp=listed)
        n += 1
    for year in rng.sample(range(1890, 2100), 60):
        leap = year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
        why = ("it is divisible by 400" if year % 400 == 0 else "it is divisible by 4 and not by 100") if leap else (
            "it is divisible by 100 but not by 400" if year % 100 == 0 else "it is not divisible by 4")
        add(f"Is {year} a leap year?", f"{'Yes' if leap else 'No'}, {year} is {'' if leap else 'not '}a leap year because {why}.")
    for r in out:
        r.pop("_kind", None)
        if "history" not in r and rng.random() < 0.1:
            r["system"] = rng.choice(_SYSTEMS)
        if not r["input"] and rng.random() < 0.12:
            r["input"] = rng.choice(_NOINPUT)  # placeholder spellings of "no input"
    rng.shuffle(out)
    return out


def gen_eval(rng: random.Random) -> list[dict]:
    """The held-out eval set: long word problems (templates never used for training) and
    trivia about facts kept out of the training tables."""
    items: list[tuple[str, str]] = []
    seen: set[str] = set()
    while len(items) < 80:
        t = len(items) % 4
        name = rng.choice(_NAMES)
        if t == 0:
            a, b = rng.randint(20, 90), rng.randint(10, 60)
            c = rng.randint(5, a + b - 5)
            q = (f"A baker made {a} loaves of bread in the morning and {b} loaves in the afternoon, then sold {c} "
                 f"of them before closing. How many loaves were left at the end of the day?")
            ans = str(a + b - c)
        elif t == 1:
            a, b = rng.randint(5, 40), rng.randint(5, 40)
            q = (f"A cyclist rides {a} kilometres on Monday, {b} kilometres on Tuesday and twice as far on Wednesday "
                 f"as on Monday. How many kilometres did the cyclist ride in total over the three days?")
            ans = str(a + b + 2 * a)
        elif t == 2:
            a, b = rng.randint(3, 20), rng.randint(6, 24)
            c = rng.randint(1, a * b - 1)
            q = (f"A school orders {a} boxes of pencils with {b} pencils in each box and hands out {c} pencils to "
                 f"students. How many pencils does the school have left?")
            ans = str(a * b - c)
        else:
            a, b = rng.randint(5, 30), rng.randint(4, 20)
            c = rng.randint(20, a * b - 1)
            q = (f"{name} saves {a} dollars every week for {b} weeks and then spends {c} dollars on a bicycle. "
                 f"How many dollars does {name} have left after buying the bicycle?")
            ans = str(a * b - c)
        if q not in seen:
            seen.add(q)
            items.append((q, ans))
    for country, capital, lang, _ in _table(_EVAL_CAPITALS):
        items.append((f"Which city is the capital of {country}, the country where {lang} is the main language spoken?", capital))
    for title, author, year in _table(_EVAL_BOOKS):
        items.append((f"Who is the author of the novel {title}, which was first published in {year}?", author))
    for name, sym, num in _table(_EVAL_ELEMENTS):
        items.append((f"Which chemical element has the symbol {sym} and the atomic number {num} in the periodic table?", name))
    rng.shuffle(items)
    return [{"id": f"eval-{i:04d}", "question": q, "answer": a} for i, (q, a) in enumerate(items, 1)]

_WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
_MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September",
           "October", "November", "December"]
_PEOPLE = ["Maria Lopez", "David Chen", "Aisha Bello", "Peter Novak", "Laura Rossi", "Hiro Sato", "Grace Okafor",
           "Tomas Berg", "Nadia Haddad", "James Walker", "Ingrid Larsen", "Carlos Mendes", "Yuki Mori", "Ellen Price"]
_CO_A = ["Northwind", "Bluepeak", "Silverline", "Redwood", "Brightwater", "Ironbridge", "Greenfield", "Suncrest",
         "Clearpath", "Stonegate", "Westbrook", "Highland", "Oakridge", "Lakeshore"]
_CO_B = {"logistics": "Logistics", "solar energy": "Solar", "software": "Software", "food": "Foods",
         "furniture": "Furniture", "textile": "Textiles", "medical device": "Medical", "bicycle": "Cycles"}


def _para_company(rng):
    a, (industry, suffix) = rng.choice(_CO_A), rng.choice(sorted(_CO_B.items()))
    company, city = f"{a} {suffix}", rng.choice(_table(_CAPITALS))[1]
    action = rng.choice(["open a new factory on the edge of the city", "hire {n} new engineers",
                         "move its headquarters to a larger building", "close two of its older warehouses",
                         "launch a range of electric delivery vans", "double its research budget",
                         "build a training centre for young apprentices"]).format(n=rng.randint(3, 40) * 10)
    reason = rng.choice(["a year of strong sales", "rising demand from customers abroad", "pressure to cut costs",
                         "new rules on carbon emissions", "a merger with a smaller rival", "delays in its supply chain"])
    effect = rng.choice(["cut delivery times by a third", "create about {m} local jobs", "reduce its energy bills",
                         "raise production by {p} percent", "bring the company back to profit"]).format(
        m=rng.randint(5, 90) * 10, p=rng.randint(10, 60))
    person, role, year = rng.choice(_PEOPLE), rng.choice(["chief executive", "finance director", "head of operations"]), rng.randint(2025, 2031)
    extras = [f"Shares in the company rose by {rng.randint(2, 15)} percent after the announcement.",
              "Analysts said the move had been widely expected.", "Local officials welcomed the news.",
              f"The company employs about {rng.randint(2, 90) * 100} people worldwide.",
              "Some employees expressed concern about the timing of the change.",
              f"It was founded in {rng.randint(1950, 2015)} as a small family business."]
    rng.shuffle(extras)
    text = (f"{company}, a {industry} company based in {city}, announced on {rng.choice(_WEEKDAYS)} that it will {action}. "
            f"The decision follows {reason}. According to {person}, the company's {role}, the change is expected to "
            f"{effect} by {year}. {extras[0]} {extras[1]}")
    summary = f"{company} will {action} after {reason}, aiming to {effect} by {year}."
    facts = {f"In which city is {company} based?": city, f"Who is the {role} of {company}?": person,
             f"By which year does {company} expect the change to take effect?": str(year)}
    return text, summary, facts


def _para_council(rng):
    city = rng.choice(_table(_CAPITALS))[1]
    yes = rng.randint(9, 30)
    no = rng.randint(1, yes - 1)
    measure = rng.choice(["build a new cycle lane along the river", "renovate the central library",
                          "plant {n} trees in the old industrial district", "extend the tram line to the airport",
                          "open three new public swimming pools", "replace all street lights with LED lamps",
                          "turn the main square into a pedestrian zone"]).format(n=rng.randint(2, 30) * 100)
    goal = rng.choice(["reduce traffic in the centre", "improve air quality", "give young families more space to play",
                       "cut the city's energy use", "attract more visitors", "make the streets safer at night"])
    cost, month, k = rng.randint(2, 250), rng.choice(_MONTHS), rng.randint(4, 36)
    extras = ["Opponents argued that the money should have been spent on housing.",
              f"Mayor {rng.choice(_PEOPLE)} called the vote a turning point for the city.",
              "A public consultation last year showed broad support for the idea.",
              "The council will publish monthly progress reports online.",
              "Several shop owners fear that the building work will keep customers away."]
    rng.shuffle(extras)
    text = (f"The city council of {city} voted {yes} to {no} on {rng.choice(_WEEKDAYS)} to {measure}. The plan, which "
            f"will cost about {cost} million euros, is meant to {goal}. Work is scheduled to begin in {month} and "
            f"should take {k} months. {extras[0]} {extras[1]}")
    summary = f"{city}'s council approved a {cost} million euro plan to {measure} in order to {goal}, starting in {month}."
    facts = {f"How many council members in {city} voted in favour of the plan?": str(yes),
             f"In which month is the work in {city} scheduled to begin?": month}
    return text, summary, facts


def _para_science(rng):
    city = rng.choice(_table(_CAPITALS))[1]
    n, k = rng.randint(2, 60) * 50, rng.randint(2, 12)
    subjects, finding = rng.choice([
        ("adults", "people who walk at least thirty minutes a day sleep better"),
        ("children", "reading aloud at home improves vocabulary at school"),
        ("office workers", "short breaks every hour reduce back pain"),
        ("bees", "city gardens can support as many bee species as farmland"),
        ("students", "handwritten notes help people remember lectures better than typed notes"),
        ("older adults", "learning a musical instrument slows memory decline"),
        ("coral reefs", "some corals recover faster from heat stress than expected"),
        ("households", "smart meters lower electricity use by about a tenth")])
    lead, journal = rng.choice(_PEOPLE), rng.choice(["Nature Health", "Science Today", "The Open Journal of Ecology",
                                                      "Behavioural Studies Quarterly"])
    extras = ["The authors cautioned that more research is needed before firm conclusions can be drawn.",
              "The work was funded by a national research council.",
              f"A follow-up study with {n * 2} participants is already planned.",
              "Independent experts described the methods as careful and well designed."]
    rng.shuffle(extras)
    text = (f"Researchers at the University of {city} have found that {finding}. The team followed {n} {subjects} "
            f"over {k} years. Lead author {lead} said the results could change everyday advice. The study was "
            f"published in the journal {journal}. {extras[0]} {extras[1]}")
    summary = f"A {k}-year study of {n} {subjects} by researchers in {city} found that {finding}."
    facts = {f"How many {subjects} did the researchers in {city} follow?": str(n),
             f"In which journal was the {city} study published?": journal}
    return text, summary, facts


def _para_sports(rng):
    teams = rng.sample(["Riverside United", "Hilltop Rovers", "Harbour City", "Northgate Athletic", "Eastfield Town",
                        "Kingsbridge Wanderers", "Old Mill FC", "Lakeside Albion", "Westport Rangers"], 2)
    s1 = rng.randint(1, 5)
    s2 = rng.randint(0, s1 - 1)
    player, crowd = rng.choice(_PEOPLE), rng.randint(3, 60) * 1000
    pos = rng.choice(["first", "second", "third", "fourth", "fifth"])
    text = (f"{teams[0]} beat {teams[1]} {s1}-{s2} on {rng.choice(_WEEKDAYS)} evening in front of {crowd:,} fans. "
            f"{player} scored {'twice' if s1 > 1 and rng.random() < 0.5 else 'the opening goal'} for the winners, "
            f"who controlled most of the match. The result moves {teams[0]} up to {pos} place in the league. "
            f"The coach of {teams[1]} admitted that his side had not played well. " +
            rng.choice(["The two teams meet again in the cup next month.", "Tickets for the next home game sold out within an hour.",
                        "Heavy rain made the pitch difficult in the second half."]))
    summary = f"{teams[0]} beat {teams[1]} {s1}-{s2} and moved up to {pos} place in the league."
    facts = {f"What was the score when {teams[0]} played {teams[1]}?": f"{s1}-{s2}",
             f"How many fans watched {teams[0]} play {teams[1]}?": f"{crowd:,}"}
    return text, summary, facts


def _para_weather(rng):
    region = rng.choice(["the north of the country", "the coast", "the mountain regions", "the capital region",
                         "the southern valleys", "the eastern plains"])
    cond, advice = rng.choice([("heavy rain", "avoid driving on flooded roads"), ("strong winds", "secure garden furniture"),
                               ("a heatwave", "drink plenty of water and stay out of the midday sun"),
                               ("thick fog", "allow extra time for their journeys"), ("snowfall", "check train times before travelling"),
                               ("thunderstorms", "stay indoors during the worst of the storms")])
    t, period = rng.randint(-8, 41), rng.choice(["this weekend", "this week", "over the coming days"])
    level = rng.choice(["a yellow", "an orange", "a red"])
    text = (f"Forecasters expect {cond} across {region} {period}, with temperatures around {t} degrees Celsius. "
            f"The national weather service has issued {level} warning and advises "
            f"residents to {advice}. Conditions should improve by {rng.choice(_WEEKDAYS)}, when "
            f"{rng.choice(['drier air moves in from the west', 'the wind turns to the south', 'a high-pressure system arrives'])}. "
            + rng.choice(["Schools in the area will stay open.", "Several outdoor events have already been cancelled.",
                          "Farmers have welcomed the change after weeks of dry weather."]))
    summary = f"{cond[0].upper() + cond[1:]} is expected across {region} {period}, and residents are advised to {advice}."
    facts = {f"What temperature is expected in {region} {period}?": f"around {t} degrees Celsius"}
    return text, summary, facts


def _para_review(rng):
    product = rng.choice(["wireless headphones", "electric kettle", "e-reader", "robot vacuum cleaner", "smartwatch",
                          "portable speaker", "coffee grinder", "desk lamp"])
    brand, price, hours = rng.choice(_CO_A), rng.randint(2, 60) * 10 - 1, rng.randint(4, 40)
    good = rng.choice(["is easy to set up", "feels solid and well built", "is pleasantly quiet", "looks elegant on a desk"])
    bad = rng.choice(["the short warranty", "the lack of a carrying case", "the slow charging",
                      "the confusing companion app", "its weight"])
    verdict = rng.choice(["it is good value for money", "it is worth buying on sale", "better options exist at this price",
                          "it is one of the best in its class"])
    text = (f"The {brand} {product} costs {price} dollars and {good}. In our tests the battery lasted about {hours} "
            f"hours, which is {'above' if hours > 20 else 'below'} average for this kind of device. The main drawback "
            f"is {bad}. Overall, {verdict}.")
    summary = f"The {price}-dollar {brand} {product} {good} but suffers from {bad}; overall, {verdict}."
    facts = {f"How much does the {brand} {product} cost?": f"{price} dollars",
             f"What is the main drawback of the {brand} {product}?": bad}
    return text, summary, facts


_PARAGRAPHS = [_para_company, _para_council, _para_science, _para_sports, _para_weather, _para_review]
_SUMMARY_PROMPTS = ["Summarize the following article in one sentence.", "Write a one-sentence summary of this text.",
                    "Give a short summary of the passage below.", "Summarise this news item.", "TL;DR:",
                    "What is the main point of the following text?"]


def gen_summaries(rng: random.Random, n: int) -> list[dict]:
    """OpenAI `messages` records asking for a one-sentence summary of a generated paragraph."""
    out, seen = [], set()
    while len(out) < n:
        text, summary, _ = rng.choice(_PARAGRAPHS)(rng)
        if text in seen:
            continue
        seen.add(text)
        msgs = []
        if rng.random() < 0.4:
            msgs.append({"role": "system", "content": rng.choice(
                ["You are a helpful assistant that writes concise, faithful summaries.",
                 "You summarise news for busy readers in one sentence."])})
        prompt = rng.choice(_SUMMARY_PROMPTS)
        msgs.append({"role": "user", "content": f"{prompt}\n\n{text}" if rng.random() < 0.8 else f"{text}\n\n{prompt}"})
        msgs.append({"role": "assistant", "content": summary})
        out.append({"messages": msgs})
    return out


_LANG_NAMES = {"en": "English", "fr": "French", "de": "German", "es": "Spanish"}


def gen_translations(rng: random.Random, n_translate: int, n_qa: int) -> list[dict]:
    """Dolly records (instruction/context/response/category): translations between English and
    French/German/Spanish from the phrase table, plus closed QA over a context paragraph."""
    rows = _table(_PHRASES)
    col = {"en": 0, "fr": 1, "de": 2, "es": 3}
    out, seen = [], set()
    while len(out) < n_translate:
        other = rng.choice(["fr", "de", "es"])
        src, dst = ("en", other) if rng.random() < 0.6 else (other, "en")
        picked = rng.sample(rows, rng.choice([1, 1, 1, 2, 2, 3]))
        s = " ".join(r[col[src]] for r in picked)
        t = " ".join(r[col[dst]] for r in picked)
        if (s, dst) in seen:
            continue
        seen.add((s, dst))
        L, S = _LANG_NAMES[dst], _LANG_NAMES[src]
        if rng.random() < 0.15:
            out.append({"instruction": f'Translate "{s}" into {L}.', "context": "", "response": t, "category": "translate"})
        else:
            ins = rng.choice([f"Translate the following sentence into {L}.", f"Translate this text from {S} to {L}.",
                              f"How do you say this in {L}?", f"Please translate into {L}.",
                              f"Give the {L} translation of the {S} text below."])
            out.append({"instruction": ins, "context": s, "response": t, "category": "translate"})
    qa = []
    while len(qa) < n_qa:
        text, _, facts = rng.choice(_PARAGRAPHS)(rng)
        q, a = rng.choice(sorted(facts.items()))
        if q in seen:
            continue
        seen.add(q)
        resp = a if rng.random() < 0.5 else f"According to the text, the answer is {a}."
        qa.append({"instruction": q, "context": text, "response": resp, "category": "qa"})
    out += qa
    rng.shuffle(out)
    return out

def _code_tasks(rng: random.Random):
    """One (description, code) pair per call, from ~30 small Python tasks with varied names,
    constants and implementations."""
    k = rng.randint(2, 9)
    lo, hi = rng.randint(-20, 0), rng.randint(10, 100)
    v = rng.choice(["nums", "values", "numbers", "items", "xs", "data"])
    s = rng.choice(["text", "s", "word", "sentence", "string"])
    tasks = [
        ("returns the sum of the squares of a list of numbers",
         rng.choice(["sum_of_squares", "square_sum", "total_squares"]),
         rng.choice([f"({v}):\n    return sum(x * x for x in {v})\n",
                     f"({v}):\n    total = 0\n    for x in {v}:\n        total += x ** 2\n    return total\n"])),
        (f"multiplies every element of a list by {k}", rng.choice([f"times_{k}", f"scale_by_{k}", f"multiply_all_by_{k}"]),
         rng.choice([f"({v}):\n    return [x * {k} for x in {v}]\n",
                     f"({v}):\n    result = []\n    for x in {v}:\n        result.append(x * {k})\n    return result\n"])),
        (f"keeps only the numbers greater than {hi} in a list", rng.choice([f"above_{hi}", f"filter_greater_than_{hi}"]),
         rng.choice([f"({v}):\n    return [x for x in {v} if x > {hi}]\n",
                     f"({v}):\n    return list(filter(lambda x: x > {hi}, {v}))\n"])),
        ("counts the vowels in a string", rng.choice(["count_vowels", "vowel_count", "num_vowels"]),
         rng.choice([f"({s}):\n    return sum(1 for ch in {s}.lower() if ch in \"aeiou\")\n",
                     f"({s}):\n    count = 0\n    for ch in {s}.lower():\n        if ch in \"aeiou\":\n            count += 1\n    return count\n"])),
        ("checks whether a string is a palindrome, ignoring case and spaces",
         rng.choice(["is_palindrome", "palindrome", "check_palindrome"]),
         rng.choice([f"({s}):\n    cleaned = {s}.replace(\" \", \"\").lower()\n    return cleaned == cleaned[::-1]\n",
                     f"({s}):\n    chars = [c.lower() for c in {s} if c != \" \"]\n    i, j = 0, len(chars) - 1\n    while i < j:\n"
                     f"        if chars[i] != chars[j]:\n            return False\n        i += 1\n        j -= 1\n    return True\n"])),
        ("returns the n-th Fibonacci number", rng.choice(["fibonacci", "fib", "nth_fibonacci"]),
         rng.choice(["(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n",
                     "(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n"])),
        ("computes the factorial of a non-negative integer", rng.choice(["factorial", "fact"]),
         rng.choice(["(n):\n    result = 1\n    for i in range(2, n + 1):\n        result *= i\n    return result\n",
                     "(n):\n    import math\n    return math.factorial(n)\n"])),
        ("reverses the order of the words in a sentence", rng.choice(["reverse_words", "words_reversed"]),
         rng.choice([f"({s}):\n    return \" \".join({s}.split()[::-1])\n",
                     f"({s}):\n    words = {s}.split()\n    words.reverse()\n    return \" \".join(words)\n"])),
        ("returns the largest value in a list without using max()", rng.choice(["largest", "find_max", "maximum"]),
         f"({v}):\n    best = {v}[0]\n    for x in {v}[1:]:\n        if x > best:\n            best = x\n    return best\n"),
        ("converts a temperature from Celsius to Fahrenheit", rng.choice(["celsius_to_fahrenheit", "c_to_f"]),
         "(celsius):\n    return celsius * 9 / 5 + 32\n"),
        ("counts how many words a sentence contains", rng.choice(["word_count", "count_words"]),
         rng.choice([f"({s}):\n    return len({s}.split())\n",
                     f"({s}):\n    return sum(1 for w in {s}.split(\" \") if w)\n"])),
        ("removes duplicates from a list while keeping the original order", rng.choice(["dedupe", "unique_in_order", "remove_duplicates"]),
         rng.choice([f"({v}):\n    seen = set()\n    out = []\n    for x in {v}:\n        if x not in seen:\n            seen.add(x)\n            out.append(x)\n    return out\n",
                     f"({v}):\n    return list(dict.fromkeys({v}))\n"])),
        ("flattens a list of lists into a single list", rng.choice(["flatten", "flatten_once"]),
         rng.choice([f"({v}):\n    return [x for sub in {v} for x in sub]\n",
                     f"({v}):\n    out = []\n    for sub in {v}:\n        out.extend(sub)\n    return out\n"])),
        (f"splits a list into chunks of size {k}", rng.choice([f"chunks_of_{k}", f"split_into_{k}s"]),
         f"({v}):\n    return [{v}[i:i + {k}] for i in range(0, len({v}), {k})]\n"),
        ("checks whether a number is prime", rng.choice(["is_prime", "prime"]),
         rng.choice(["(n):\n    if n < 2:\n        return False\n    i = 2\n    while i * i <= n:\n        if n % i == 0:\n"
                     "            return False\n        i += 1\n    return True\n",
                     "(n):\n    return n > 1 and all(n % d for d in range(2, int(n ** 0.5) + 1))\n"])),
        ("returns the greatest common divisor of two integers", rng.choice(["gcd", "greatest_common_divisor"]),
         rng.choice(["(a, b):\n    while b:\n        a, b = b, a % b\n    return abs(a)\n",
                     "(a, b):\n    import math\n    return math.gcd(a, b)\n"])),
        ("performs binary search on a sorted list and returns the index of the target, or -1",
         rng.choice(["binary_search", "bsearch", "find_sorted"]),
         f"({v}, target):\n    lo, hi = 0, len({v}) - 1\n    while lo <= hi:\n        mid = (lo + hi) // 2\n"
         f"        if {v}[mid] == target:\n            return mid\n        if {v}[mid] < target:\n            lo = mid + 1\n"
         f"        else:\n            hi = mid - 1\n    return -1\n"),
        ("merges two sorted lists into one sorted list", rng.choice(["merge_sorted", "merge_two"]),
         "(a, b):\n    i = j = 0\n    out = []\n    while i < len(a) and j < len(b):\n        if a[i] <= b[j]:\n"
         "            out.append(a[i])\n            i += 1\n        else:\n            out.append(b[j])\n            j += 1\n"
         "    return out + a[i:] + b[j:]\n"),
        ("counts how often each character appears in a string", rng.choice(["char_frequency", "letter_counts"]),
         rng.choice([f"({s}):\n    counts = {{}}\n    for ch in {s}:\n        counts[ch] = counts.get(ch, 0) + 1\n    return counts\n",
                     f"({s}):\n    from collections import Counter\n    return dict(Counter({s}))\n"])),
        ("checks whether two words are anagrams of each other", rng.choice(["are_anagrams", "is_anagram"]),
         rng.choice(["(a, b):\n    return sorted(a.lower()) == sorted(b.lower())\n",
                     "(a, b):\n    from collections import Counter\n    return Counter(a.lower()) == Counter(b.lower())\n"])),
        ("returns the running totals of a list of numbers", rng.choice(["running_total", "cumulative_sum"]),
         rng.choice([f"({v}):\n    out, total = [], 0\n    for x in {v}:\n        total += x\n        out.append(total)\n    return out\n",
                     f"({v}):\n    from itertools import accumulate\n    return list(accumulate({v}))\n"])),
        ("computes the dot product of two vectors of equal length", rng.choice(["dot", "dot_product"]),
         "(a, b):\n    return sum(x * y for x, y in zip(a, b))\n"),
        ("transposes a matrix given as a list of rows", rng.choice(["transpose", "transpose_matrix"]),
         rng.choice(["(rows):\n    return [list(col) for col in zip(*rows)]\n",
                     "(rows):\n    return [[row[i] for row in rows] for i in range(len(rows[0]))]\n"])),
        (f"clamps a number to the range {lo} to {hi}", rng.choice(["clamp", f"clamp_{abs(lo)}_{hi}"]),
         f"(x):\n    return max({lo}, min({hi}, x))\n"),
        ("returns the average of a list, ignoring None values", rng.choice(["mean_ignore_none", "average"]),
         f"({v}):\n    present = [x for x in {v} if x is not None]\n    return sum(present) / len(present) if present else None\n"),
        ("formats a number of seconds as HH:MM:SS", rng.choice(["format_duration", "to_hms"]),
         "(seconds):\n    h, rest = divmod(seconds, 3600)\n    m, s = divmod(rest, 60)\n    return f\"{h:02d}:{m:02d}:{s:02d}\"\n"),
        ("checks whether a year is a leap year", rng.choice(["is_leap_year", "leap"]),
         "(year):\n    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)\n"),
        ("returns the sum of the digits of a non-negative integer", rng.choice(["digit_sum", "sum_digits"]),
         rng.choice(["(n):\n    return sum(int(d) for d in str(n))\n",
                     "(n):\n    total = 0\n    while n:\n        total += n % 10\n        n //= 10\n    return total\n"])),
        ("checks whether a positive integer is a power of two", rng.choice(["is_power_of_two", "power_of_two"]),
         "(n):\n    return n > 0 and n & (n - 1) == 0\n"),
        ("counts the non-empty lines in a text file", rng.choice(["count_lines", "non_empty_lines"]),
         "(path):\n    with open(path, encoding=\"utf-8\") as f:\n        return sum(1 for line in f if line.strip())\n"),
        (f"returns the {k} most common words in a text", rng.choice([f"top_{k}_words", "most_common_words"]),
         f"({s}):\n    from collections import Counter\n    return [w for w, _ in Counter({s}.lower().split()).most_common({k})]\n"),
        (f"returns every {k}-th element of a list, starting with the first", rng.choice([f"every_{k}th", "take_every"]),
         f"({v}):\n    return {v}[::{k}]\n"),
    ]
    desc, name, body = rng.choice(tasks)
    return desc, name, body.replace("fib(n - 1) + fib(n - 2)", f"{name}(n - 1) + {name}(n - 2)")


def gen_code(rng: random.Random, n: int) -> list[list[str]]:
    """prompt/completion rows: a request for a small Python function and the function itself."""
    out, seen = [], set()
    while len(out) < n:
        desc, name, body = _code_tasks(rng)
        prompt = rng.choice([f"Write a Python function `{name}` that {desc}.",
                             f"Implement {name} in Python: it {desc}.",
                             f"Create a Python function called {name} which {desc}.",
                             f"# Python\n# Task: a function that {desc}.\n"])
        code = f"def {name}{body}"
        if rng.random() < 0.3:
            code = code.replace(":\n", f":\n    \"\"\"{desc[0].upper() + desc[1:]}.\"\"\"\n", 1)
        if rng.random() < 0.25:
            code = f"```python\n{code}```"
        key = (desc, body)  # one record per implementation, whatever its name or prompt wording
        if key in seen:
            continue
        seen.add(key)
        out.append([prompt, code])
    return out

_RECIPES = {
    "pancakes": ([("plain flour", 50, "g"), ("milk", 75, "ml"), ("egg", 0.5, ""), ("butter", 10, "g")],
                 "Whisk the flour, milk and egg into a smooth batter, rest it for ten minutes, then fry thin pancakes in a little butter."),
    "tomato soup": ([("ripe tomatoes", 200, "g"), ("onion", 0.25, ""), ("vegetable stock", 150, "ml"), ("olive oil", 5, "ml")],
                    "Soften the onion in the oil, add the chopped tomatoes and stock, simmer for twenty minutes and blend until smooth."),
    "omelette": ([("eggs", 2, ""), ("butter", 10, "g"), ("grated cheese", 20, "g")],
                 "Beat the eggs with a pinch of salt, cook them gently in foaming butter, add the cheese and fold the omelette in half."),
    "guacamole": ([("avocado", 1, ""), ("lime juice", 10, "ml"), ("red onion", 0.125, ""), ("coriander", 2, "g")],
                  "Mash the avocado, stir in the lime juice, finely chopped onion and coriander, and season with salt."),
    "fried rice": ([("cooked rice", 150, "g"), ("egg", 1, ""), ("frozen peas", 40, "g"), ("soy sauce", 10, "ml")],
                   "Fry the egg in a hot pan, add the rice and peas, stir-fry for five minutes and finish with soy sauce."),
    "lemonade": ([("lemons", 1, ""), ("sugar", 20, "g"), ("cold water", 250, "ml")],
                 "Squeeze the lemons, dissolve the sugar in a little warm water, then mix everything with cold water and ice."),
    "banana bread": ([("ripe bananas", 0.75, ""), ("flour", 45, "g"), ("sugar", 20, "g"), ("butter", 15, "g")],
                     "Mash the bananas, mix in the melted butter, sugar and flour, pour into a tin and bake at 180 degrees for about 50 minutes."),
    "pasta salad": ([("pasta", 75, "g"), ("cherry tomatoes", 60, "g"), ("feta", 25, "g"), ("olive oil", 10, "ml")],
                    "Cook and cool the pasta, halve the tomatoes, crumble the feta and toss everything with the oil and some basil."),
}
_SUBSTITUTES = {"butter": "a neutral oil such as sunflower oil", "milk": "oat or soy milk", "egg": "a tablespoon of ground flaxseed mixed with water",
                "eggs": "silken tofu scrambled the same way", "sugar": "honey, using a little less", "soy sauce": "tamari",
                "feta": "mozzarella", "coriander": "parsley", "lime juice": "lemon juice", "flour": "a gluten-free flour blend",
                "plain flour": "a gluten-free flour blend", "pasta": "gluten-free pasta", "olive oil": "rapeseed oil",
                "vegetable stock": "water with a pinch of salt", "grated cheese": "chopped herbs"}
_TECH = {
    "my Wi-Fi keeps disconnecting": ["Restart your router by unplugging it for thirty seconds.",
                                     "Move closer to the router or remove obstacles between you and it.",
                                     "Forget the network on your device and join it again with the password."],
    "my laptop has become very slow": ["Close programs you are not using and check the task manager for anything using a lot of memory.",
                                       "Make sure at least ten percent of your disk is free.",
                                       "Install pending system updates and restart the laptop."],
    "my printer says it is offline": ["Check that the printer and your computer are on the same network.",
                                      "Turn the printer off and on again, then remove and re-add it in the printer settings.",
                                      "Cancel any stuck jobs in the print queue."],
    "I forgot the password for my email account": ["Use the \"Forgot password\" link on the sign-in page.",
                                                   "Follow the reset link sent to your recovery address or phone.",
                                                   "Choose a new, long password and store it in a password manager."],
    "my phone storage is full": ["Delete apps you no longer use.", "Move photos and videos to a computer or cloud storage.",
                                 "Clear the cache of large apps such as browsers and messaging apps."],
}
_TOOLS_SPEC = [
    {"name": "get_weather", "description": "Get the current weather for a city.",
     "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}},
    {"name": "convert_currency", "description": "Convert an amount between two currencies.",
     "parameters": {"type": "object", "properties": {"amount": {"type": "number"}, "from": {"type": "string"},
                                                     "to": {"type": "string"}}, "required": ["amount", "from", "to"]}},
]
_RATES = {("EUR", "USD"): 1.08, ("USD", "EUR"): 0.93, ("GBP", "EUR"): 1.17, ("EUR", "JPY"): 162.4, ("USD", "CAD"): 1.36,
          ("CHF", "EUR"): 1.04}


def _turns(*pairs):
    return [{"from": f, "value": v} for f, v in pairs]


def gen_dialogues(rng: random.Random) -> list[dict]:
    """ShareGPT conversations: travel, cooking, maths tutoring, tech support, books, and tool calls."""
    out: list[dict] = []
    phrases = _table(_PHRASES)
    col = {"French": 1, "German": 2, "Spanish": 3}
    for country, capital, lang, cont in _table(_CAPITALS):
        conv = [("human", rng.choice([f"I'm planning a trip to {capital} next month. Which country is it in?",
                                      f"Hi! I'm visiting {capital} soon. What country is that?"])),
                ("gpt", f"{capital} is the capital of {country}, in {cont}.")]
        follow = []
        answer = f"The main language of {country} is {lang}."
        if lang in col:
            p = rng.choice(phrases)
            answer += f' A useful phrase is "{p[col[lang]]}", which means "{p[0]}"'
        follow.append(("What language do people speak there?", answer))
        d = rng.randint(5, 400)
        follow.append((f"The hotel is {d} km from the airport. How far is that in miles?", f"{d} km is about {d * 0.621371:.1f} miles."))
        t = rng.randint(-5, 35)
        follow.append((f"The forecast says {t} degrees Celsius. What is that in Fahrenheit?",
                       f"{t} degrees Celsius is {t * 9 / 5 + 32:.0f} degrees Fahrenheit."))
        rng.shuffle(follow)
        for q, a in follow[: rng.randint(1, 3)]:
            conv += [("human", q), ("gpt", a)]
        if rng.random() < 0.5:
            conv += [("human", rng.choice(["Thanks, that's really helpful!", "Great, thank you.", "Perfect, thanks!"])),
                     ("gpt", rng.choice(["You're welcome! Have a wonderful trip.", "Glad I could help. Enjoy your trip!",
                                         f"My pleasure. Enjoy {capital}!"]))]
        out.append({"conversations": _turns(*conv)})
    for dish, (ingredients, method) in _RECIPES.items():
        for servings in rng.sample(range(1, 13), 9):
            lines = []
            for name, qty, unit in ingredients:
                q = qty * servings
                qs = f"{q:g}" if unit else (f"{q:g}" if q == int(q) else f"{q:.2f}".rstrip("0"))
                lines.append(f"- {qs}{' ' + unit if unit else ''} {name}".replace("  ", " "))
            conv = [("human", rng.choice([f"How do I make {dish} for {servings} {'person' if servings == 1 else 'people'}?",
                                          f"Can you give me a {dish} recipe that serves {servings}?"])),
                    ("gpt", f"Here is a simple {dish} recipe for {servings}:\n" + "\n".join(lines) + f"\n\n{method}")]
            subs = [n for n, _, _ in ingredients if n in _SUBSTITUTES]
            if subs and rng.random() < 0.7:
                ing = rng.choice(subs)
                conv += [("human", f"I don't have any {ing}. What can I use instead?"),
                         ("gpt", f"You can replace the {ing} with {_SUBSTITUTES[ing]}.")]
            out.append({"conversations": _turns(*conv)})
    seen = set()
    while len(seen) < 150:
        a, b = rng.randint(12, 99), rng.randint(12, 99)
        if (a, b) in seen:
            continue
        seen.add((a, b))
        tens, ones = b // 10 * 10, b % 10
        conv = [("human", rng.choice([f"Can you help me multiply {a} by {b}?", f"How do I work out {a} x {b} in my head?",
                                      f"What's {a} times {b}? Please show the steps."])),
                ("gpt", f"Split {b} into {tens} + {ones}. Then {a} x {tens} = {a * tens} and {a} x {ones} = {a * ones}. "
                        f"Adding them gives {a * tens} + {a * ones} = {a * b}.")]
        if rng.random() < 0.5:
            c = rng.randint(2, 9)
            conv += [("human", f"And if I divide that by {c}?"),
                     ("gpt", f"{a * b} / {c} = {a * b // c}" + (f" remainder {a * b % c}." if a * b % c else " exactly."))]
        out.append({"conversations": _turns(*conv)})
    for problem, steps in _TECH.items():
        # Two conversations per problem that share at most one step, so they are not near duplicates.
        for first, device in zip((0, 2), rng.sample(["", " on Windows", " on my Mac", " at home", " since yesterday"], 2)):
            if first == 0:
                conv = [("human", f"Hi, {problem}{device}. What should I do?"),
                        ("gpt", f"Let's start simple: {steps[0]}"),
                        ("human", "Done, but it still doesn't work."), ("gpt", f"Next, {steps[1][0].lower()}{steps[1][1:]}")]
            else:
                conv = [("human", f"Any tips? {problem[0].upper()}{problem[1:]}{device}."),
                        ("gpt", f"The most common fix is this one: {steps[2]} If the problem continues, "
                                f"contact the manufacturer's support team.")]
            out.append({"conversations": _turns(*conv)})
    for title, author, year in _table(_BOOKS):
        conv = [("human", rng.choice(["Can you recommend a classic novel?", "I'd like to read a classic. Any suggestion?",
                                      "What's a famous novel I should read?"]) + f" Something like {title}, maybe?"),
                ("gpt", f"{title} by {author} is a good choice in itself. It was first published in {year} and is still widely read."),
                ("human", f"Who else wrote around {year}?"),
                ("gpt", "Many well-known writers were active then; " +
                 ", ".join(f"{t2} by {a2} ({y2})" for t2, a2, y2 in rng.sample(_table(_BOOKS), 2) if t2 != title) + " are worth a look.")]
        out.append({"conversations": _turns(*conv)})
    tools = json.dumps(_TOOLS_SPEC, ensure_ascii=False)
    cities = [c[1] for c in _table(_CAPITALS)]
    for i in range(70):
        if i % 2 == 0:
            city = cities[i // 2 % len(cities)]
            t, hum = rng.randint(-10, 38), rng.randint(20, 95)
            cond = rng.choice(["sunny", "cloudy", "light rain", "snow", "windy", "foggy"])
            conv = [("human", rng.choice([f"What's the weather like in {city} right now?", f"Is it cold in {city} today?"])),
                    ("function_call", json.dumps({"name": "get_weather", "arguments": {"city": city}}, ensure_ascii=False)),
                    ("observation", json.dumps({"city": city, "temperature_c": t, "condition": cond, "humidity": hum})),
                    ("gpt", f"It is currently {t} degrees Celsius and {cond} in {city}, with {hum}% humidity.")]
        else:
            (src, dst), amount = rng.choice(sorted(_RATES.items()))[0], rng.randint(5, 2000)
            result = round(amount * _RATES[(src, dst)], 2)
            conv = [("human", f"How much is {amount} {src} in {dst}?"),
                    ("function_call", json.dumps({"name": "convert_currency", "arguments": {"amount": amount, "from": src, "to": dst}})),
                    ("observation", json.dumps({"result": result, "currency": dst})),
                    ("gpt", f"{amount} {src} is about {result:,.2f} {dst} at the current rate.")]
        out.append({"conversations": _turns(*conv), "tools": tools})
    for r in out:
        if rng.random() < 0.15:
            r["conversations"].insert(0, {"from": "system", "value": rng.choice(_SYSTEMS)})
    rng.shuffle(out)
    return out

# ---------------------------------------------------------------------------------------------
# Planting defects. Each record is an Entry; a planted one carries its defect kind and details.
# After layout every Entry has a location, and defects.json lists them.
# ---------------------------------------------------------------------------------------------


class Entry:
    __slots__ = ("rec", "raw", "defect", "info", "loc")

    def __init__(self, rec=None, raw=None, defect=None, **info):
        self.rec, self.raw, self.defect, self.info, self.loc = rec, raw, defect, info, None


class Fmt:
    """Where the prompt and the answer live in one raw format."""

    def __init__(self, name):
        self.name = name

    def _last(self, rec, roles, key_role):
        turns = rec["conversations"] if self.name == "sharegpt" else rec["messages"]
        for t in reversed(turns):
            if t[key_role] in roles:
                return t
        raise KeyError("no such turn")

    def _first(self, rec, roles, key_role):
        turns = rec["conversations"] if self.name == "sharegpt" else rec["messages"]
        return next(t for t in turns if t[key_role] in roles)

    def answer(self, rec):
        if self.name == "alpaca":
            return rec["output"]
        if self.name == "dolly":
            return rec["response"]
        if self.name == "csv":
            return rec[1]
        if self.name == "sharegpt":
            return self._last(rec, ("gpt",), "from")["value"]
        return self._last(rec, ("assistant",), "role")["content"]

    def set_answer(self, rec, text):
        if self.name == "alpaca":
            rec["output"] = text
        elif self.name == "dolly":
            rec["response"] = text
        elif self.name == "csv":
            rec[1] = text
        elif self.name == "sharegpt":
            self._last(rec, ("gpt",), "from")["value"] = text
        else:
            self._last(rec, ("assistant",), "role")["content"] = text

    def prompt(self, rec):
        if self.name in ("alpaca", "dolly"):
            return rec["instruction"]
        if self.name == "csv":
            return rec[0]
        if self.name == "sharegpt":
            return self._first(rec, ("human",), "from")["value"]
        return self._first(rec, ("user",), "role")["content"]

    def set_prompt(self, rec, text):
        if self.name in ("alpaca", "dolly"):
            rec["instruction"] = text
        elif self.name == "csv":
            rec[0] = text
        elif self.name == "sharegpt":
            self._first(rec, ("human",), "from")["value"] = text
        else:
            self._first(rec, ("user",), "role")["content"] = text

    def text(self, rec):
        """The whole record's text, as a reader would put it into the conversation."""
        if self.name == "alpaca":
            hist = [x for pair in rec.get("history", []) for x in pair]
            parts = [rec.get("system", ""), *hist, rec["instruction"], rec.get("input", ""), rec["output"]]
        elif self.name == "dolly":
            parts = [rec["instruction"], rec["context"], rec["response"]]
        elif self.name == "csv":
            parts = rec
        elif self.name == "sharegpt":
            parts = [t["value"] for t in rec["conversations"]]
        else:
            parts = [m["content"] for m in rec["messages"]]
        return "\n".join(p for p in parts if p)


def shingles(text: str, n: int = 5) -> set:
    """Word n-grams of lower-cased text: the similarity measure defects.json reports for
    near duplicates (and the usual MinHash input)."""
    w = text.lower().split()
    return {tuple(w[i:i + n]) for i in range(max(1, len(w) - n + 1))}


def jaccard(a: str, b: str) -> float:
    x, y = shingles(a), shingles(b)
    return len(x & y) / max(1, len(x | y))


def _clean(entries):
    return [e for e in entries if e.defect is None and e.rec is not None and not e.info.get("dup_source")]


def _pick(rng, entries, fmt, k, min_words=0, where=None):
    pool = [e for e in _clean(entries) if len(fmt.text(e.rec).split()) >= min_words and (where is None or where(e))]
    return rng.sample(pool, min(k, len(pool)))


def _truncate(rng, text):
    lo, hi = int(len(text) * 0.35), int(len(text) * 0.7)
    for _ in range(50):
        pos = rng.randint(lo, hi)
        if text[pos - 1].isalpha() and text[pos].isalpha():
            return text[:pos]
    return text[: (lo + hi) // 2].rstrip(" .")


def _pii(rng):
    kind = rng.choice(["email", "phone", "card", "email+phone", "ip"])
    e, p, c, ip = rng.choice(_EMAILS), rng.choice(_PHONES), rng.choice(_CARDS), rng.choice(_IPS)
    text = {"email": f"You can reach me at {e} if anything is unclear.",
            "phone": f"Call me on {p} if you need more details.",
            "card": f"My card number is {c}, please keep it on file.",
            "email+phone": f"My email is {e} and my phone number is {p}.",
            "ip": f"My computer's IP address is {ip}."}[kind]
    return kind, text


_NEAR_SWAPS = {"the": "this", "is": "was", "a": "one", "and": "&", "of": "for", "in": "within", "to": "into",
               "about": "around", "will": "shall", "very": "really"}


def _near_edit(rng, text):
    """A few word-level edits or a case/punctuation change: what re-scraped copies look like."""
    style = rng.choice(["words", "words", "case_punct"])
    if style == "case_punct":
        out = text.lower().replace(",", "").replace(".", "").replace("?", "").replace("!", "")
        return ("case_punct", out) if out != text else ("words", text + " ")
    words = text.split(" ")
    idx = [i for i, w in enumerate(words) if w.lower() in _NEAR_SWAPS]
    for i in rng.sample(idx, min(len(idx), rng.randint(1, 3))):
        words[i] = _NEAR_SWAPS[words[i].lower()]
    if not idx:
        words.insert(rng.randrange(len(words) + 1), rng.choice(["really", "also", "just"]))
    return "words", " ".join(words)


def _renorm(rng, text):
    """Differences that Unicode/whitespace normalisation removes: an exact duplicate after NFC
    and whitespace folding."""
    import unicodedata
    style = rng.choice(["nfd", "zero_width", "trailing_ws", "nbsp"])
    if style == "nfd" and unicodedata.normalize("NFD", text) != text:
        return "nfd", unicodedata.normalize("NFD", text)
    if style == "nbsp" and " " in text:
        return "nbsp", text.replace(" ", "\u00a0", 2)
    if style == "trailing_ws":
        return "trailing_ws", text + "  \n"
    # Not doubled inner spaces: a normaliser must keep those (they are code indentation).
    return "zero_width", text.replace(" ", "\u200b ", 1) if " " in text else text + "\u200b"


def plant(rng: random.Random, entries: list, fmt: Fmt, spec: dict, others: list | None = None) -> None:
    """Apply the in-place defects of `spec` to distinct clean records, then insert copies
    (duplicates). Every planted entry records its kind and details."""
    import copy

    def mutate(kind, k, min_words, fn):
        for e in _pick(rng, entries, fmt, k, min_words):
            e.defect = kind
            fn(e)

    mutate("empty_answer", spec.get("empty_answer", 0), 0,
           lambda e: fmt.set_answer(e.rec, rng.choice(["", " ", "\n", "  "])))

    def placeholder(e):
        e.info["value"] = rng.choice(_PLACEHOLDERS)
        fmt.set_answer(e.rec, e.info["value"])
    mutate("placeholder_answer", spec.get("placeholder_answer", 0), 0, placeholder)
    mutate("refusal", spec.get("refusal", 0), 0, lambda e: fmt.set_answer(e.rec, rng.choice(_REFUSALS)))

    def wrong_lang(e):
        lang = rng.choice(sorted(_WRONG_LANGUAGE))
        e.info["lang"] = lang
        fmt.set_answer(e.rec, " ".join(rng.sample(_WRONG_LANGUAGE[lang], 2)))
    mutate("wrong_language", spec.get("wrong_language", 0), 0, wrong_lang)

    def truncated(e):
        full = fmt.answer(e.rec)
        fmt.set_answer(e.rec, _truncate(rng, full))
        e.info["kept_chars"], e.info["full_chars"] = len(fmt.answer(e.rec)), len(full)
    for e in _pick(rng, entries, fmt, spec.get("truncated", 0), where=lambda e: len(fmt.answer(e.rec)) >= 60):
        e.defect = "truncated"
        truncated(e)

    def repeated(e):
        ans = fmt.answer(e.rec).strip()
        unit = ans.split(". ")[0].rstrip(".") + "."
        n = rng.randint(6, 12)
        e.info["repeats"] = n
        fmt.set_answer(e.rec, " ".join([unit] * n))
    mutate("repeated_text", spec.get("repeated_text", 0), 0, repeated)

    def pii(e):
        kind, text = _pii(rng)
        e.info["pii"] = kind
        if rng.random() < 0.6:
            e.info["in"] = "prompt"
            fmt.set_prompt(e.rec, f"{fmt.prompt(e.rec)} {text}")
        else:
            e.info["in"] = "answer"
            fmt.set_answer(e.rec, f"{fmt.answer(e.rec)} {text}")
    mutate("pii", spec.get("pii", 0), 0, pii)

    def merged(e):
        donors = rng.sample(_clean(entries if others is None else others), 2)
        if rng.random() < 0.5:
            e.info["style"] = "template_leak"
            d = donors[0].rec
            fmt.set_answer(e.rec, f"{fmt.answer(e.rec)}\n\n### Instruction:\n{fmt.prompt(d)}\n\n### Response:\n{fmt.answer(d)}")
        else:
            e.info["style"] = "answers_to_other_instructions"
            parts = [fmt.answer(e.rec)] + [fmt.answer(d.rec) for d in donors]
            fmt.set_answer(e.rec, "\n".join(f"{i}. {p}" for i, p in enumerate(parts, 1)))
    mutate("merged_instructions", spec.get("merged_instructions", 0), 0, merged)

    def noise(e):
        style = rng.choice(["zero_width", "control_char", "crlf", "nfd"])
        p = fmt.prompt(e.rec)
        import unicodedata
        new = {"zero_width": p.replace(" ", " \u200b", 1), "control_char": p + "\x07",
               "crlf": p.replace(" ", "\r\n", 1), "nfd": unicodedata.normalize("NFD", p)}[style]
        if new == p:
            new, style = p + "\u200b", "zero_width"
        e.info["style"] = style
        fmt.set_prompt(e.rec, new)
    mutate("unicode_noise", spec.get("unicode_noise", 0), 0, noise)

    inserts = []
    for e in _pick(rng, entries, fmt, spec.get("exact_duplicate", 0)):
        e.info["dup_source"] = True
        inserts.append(Entry(copy.deepcopy(e.rec), defect="exact_duplicate", duplicate_of=e))
    for e in _pick(rng, entries, fmt, spec.get("duplicate_after_normalize", 0), min_words=6):
        e.info["dup_source"] = True
        rec = copy.deepcopy(e.rec)
        style, text = _renorm(rng, fmt.answer(rec))
        fmt.set_answer(rec, text)
        inserts.append(Entry(rec, defect="duplicate_after_normalize", duplicate_of=e, style=style))
    n_near = spec.get("near_duplicate", 0)
    for e in _pick(rng, entries, fmt, n_near * 8, min_words=12):
        if n_near == 0:
            break
        rec = copy.deepcopy(e.rec)
        style, text = _near_edit(rng, fmt.answer(rec))
        fmt.set_answer(rec, text)
        if style == "words" and rng.random() < 0.5:
            s2, p2 = _near_edit(rng, fmt.prompt(rec))
            if s2 == "words":
                fmt.set_prompt(rec, p2)
        j = jaccard(fmt.text(e.rec), fmt.text(rec))
        if not 0.7 <= j < 1.0 or fmt.text(rec).lower() == fmt.text(e.rec).lower() and style == "words":
            continue
        e.info["dup_source"] = True
        inserts.append(Entry(rec, defect="near_duplicate", duplicate_of=e, style=style, jaccard_5gram=round(j, 3)))
        n_near -= 1
    for ins in inserts:
        entries.insert(rng.randrange(len(entries) + 1), ins)


def insert_all(rng: random.Random, entries: list, new: list) -> None:
    for e in new:
        entries.insert(rng.randrange(len(entries) + 1), e)


def _edit_question(rng, q):
    style = rng.choice(["lowercase", "no_punct", "prefix", "word_swap"])
    if style == "lowercase":
        return style, q.lower()
    if style == "no_punct":
        return style, q.replace(",", "").replace("?", "")
    if style == "prefix":
        return style, "Question: " + q
    return style, q.replace(" the ", " this ", 1) if " the " in q else q.replace("How many", "How much", 1)

# Defects planted per file: kind -> number of records. Chosen so each kind is a few percent,
# as in real scraped instruction sets, and large enough to show up in a run's ledger.
PLAN = {
    "qa": dict(exact_duplicate=40, duplicate_after_normalize=12, near_duplicate=10, empty_answer=18, placeholder_answer=14,
               refusal=20, wrong_language=18, truncated=12, repeated_text=8, pii=14, merged_instructions=10, unicode_noise=12),
    "dialogue": dict(exact_duplicate=12, duplicate_after_normalize=4, near_duplicate=12, empty_answer=6, placeholder_answer=4,
                     refusal=10, wrong_language=8, truncated=8, repeated_text=5, pii=12, unicode_noise=5),
    "summarize": dict(exact_duplicate=15, duplicate_after_normalize=6, near_duplicate=15, empty_answer=8, placeholder_answer=5,
                      refusal=6, wrong_language=8, truncated=10, repeated_text=6, pii=6, merged_instructions=4, unicode_noise=5),
    "translate": dict(exact_duplicate=14, duplicate_after_normalize=5, near_duplicate=6, empty_answer=7, placeholder_answer=5,
                      refusal=5, truncated=6, repeated_text=4, pii=4, unicode_noise=4),
    "code": dict(exact_duplicate=10, duplicate_after_normalize=4, near_duplicate=8, empty_answer=6, placeholder_answer=4,
                 refusal=6, truncated=8, repeated_text=3, pii=3, unicode_noise=3),
}

# What a pipeline is expected to do with each kind (documentation for tests and the README).
EXPECT = {
    "exact_duplicate": "drop in exact dedup (keep one per group)",
    "duplicate_after_normalize": "identical to its source after NFC + whitespace normalisation; drop in exact dedup after normalize",
    "near_duplicate": "drop in near dedup (MinHash over word 5-grams; jaccard_5gram gives the true similarity to its source)",
    "cross_source_duplicate": "same conversation as an Alpaca record, in the Dolly file; drop in exact dedup across sources",
    "empty_answer": "drop: empty or whitespace-only answer",
    "placeholder_answer": "drop: placeholder answer (N/A, TODO, ...)",
    "refusal": "drop: boilerplate refusal",
    "wrong_language": "drop: answer not in English where English is expected",
    "wrong_target_language": "drop: translation into another language than the one asked for",
    "truncated": "drop or flag: answer cut mid-word",
    "repeated_text": "drop: one sentence repeated many times",
    "pii": "redact (or drop): e-mail, phone, card number (Luhn-valid test numbers) or IP address",
    "merged_instructions": "drop or flag: answer continues with answers to other instructions",
    "unicode_noise": "keep, cleaned by normalize (zero-width space, control char, CRLF, NFD)",
    "eval_leak": "drop in decontamination against evalsets/sample_eval.jsonl",
    "role_order": "normalize fixes or drops: conversation starting with the assistant, or two user turns in a row",
    "no_assistant_turn": "drop: nothing to learn from (conversation ends before any answer)",
    "malformed": "quarantine with file, line/index and error",
    "placeholder_input": "keep; normalize turns these Alpaca inputs into an empty input",
}


def _malformed_jsonl(kind_lines):
    return [Entry(raw=raw, defect="malformed", error=err) for err, raw in kind_lines]


def build_data(out: Path) -> list[Path]:
    import csv
    import gzip
    import io

    rng = random.Random(DATA_SEED)
    evalset = gen_eval(random.Random(DATA_SEED + "/eval"))
    fm = {k: Fmt(k) for k in ("alpaca", "sharegpt", "messages", "dolly", "csv")}

    qa = [Entry(r) for r in gen_qa(random.Random(DATA_SEED + "/qa"))]
    dia = [Entry(r) for r in gen_dialogues(random.Random(DATA_SEED + "/dialogue"))]
    summ = [Entry(r) for r in gen_summaries(random.Random(DATA_SEED + "/summarize"), 640)]
    tra = [Entry(r) for r in gen_translations(random.Random(DATA_SEED + "/translate"), 520, 110)]
    code = [Entry(r) for r in gen_code(random.Random(DATA_SEED + "/code"), 340)]

    plant(rng, qa, fm["alpaca"], PLAN["qa"])
    plant(rng, dia, fm["sharegpt"], PLAN["dialogue"])
    plant(rng, summ, fm["messages"], PLAN["summarize"])
    plant(rng, tra, fm["dolly"], PLAN["translate"], others=[e for e in tra if e.rec["category"] == "translate"])
    plant(rng, code, fm["csv"], PLAN["code"])

    # Translations into the wrong target language: the response is the right sentence in
    # another of the three languages.
    rows, col = _table(_PHRASES), {"French": 1, "German": 2, "Spanish": 3}
    by_lang = {lang: {r[0]: r for r in rows} for lang in col}
    wt = [e for e in _clean(tra) if e.rec["category"] == "translate" and e.rec["context"] in by_lang["French"]
          and any(e.rec["instruction"].endswith(f"{L}.") for L in col)]
    for e in rng.sample(wt, 6):
        asked = next(L for L in col if e.rec["instruction"].endswith(f"{L}."))
        given = rng.choice(sorted(set(col) - {asked}))
        e.rec["response"] = by_lang[given][e.rec["context"]][col[given]]
        e.defect, e.info["asked"], e.info["given"] = "wrong_target_language", asked, given

    # Cross-source duplicates: plain Alpaca QA copied into the Dolly file as category "qa".
    plain = [e for e in _clean(qa) if not e.rec["input"] and "system" not in e.rec and "history" not in e.rec]
    cross = []
    for e in rng.sample(plain, 8):
        e.info["dup_source"] = True
        cross.append(Entry({"instruction": e.rec["instruction"], "context": "", "response": e.rec["output"], "category": "qa"},
                           defect="cross_source_duplicate", duplicate_of=e))
    insert_all(rng, tra, cross)

    # Eval-set leakage: questions copied verbatim or lightly edited into the training sources.
    leak_items = rng.sample(evalset, 38)
    leaks_qa, leaks_dia, leaks_tra = [], [], []
    for i, item in enumerate(leak_items):
        ans = rng.choice([item["answer"], f"The answer is {item['answer']}."])
        if i < 18:
            leaks_qa.append(Entry({"instruction": item["question"], "input": "", "output": ans}, defect="eval_leak",
                                  eval_id=item["id"], variant="verbatim"))
        elif i < 28:
            style, q = _edit_question(rng, item["question"])
            leaks_qa.append(Entry({"instruction": q, "input": "", "output": ans}, defect="eval_leak",
                                  eval_id=item["id"], variant=f"edited:{style}"))
        elif i < 34:
            leaks_dia.append(Entry({"conversations": _turns(
                ("human", rng.choice(["Hi! Can you help me with a question from my homework?", "Hello, quick question for you."])),
                ("gpt", "Of course, go ahead."), ("human", item["question"]), ("gpt", ans))},
                defect="eval_leak", eval_id=item["id"], variant="in_dialogue"))
        else:
            leaks_tra.append(Entry({"instruction": item["question"], "context": "", "response": ans, "category": "qa"},
                                   defect="eval_leak", eval_id=item["id"], variant="verbatim"))
    insert_all(rng, qa, leaks_qa)
    insert_all(rng, dia, leaks_dia)
    insert_all(rng, tra, leaks_tra)

    # Conversations a normaliser must fix or drop.
    for e in _pick(rng, dia, fm["sharegpt"], 3, where=lambda e: len(e.rec["conversations"]) >= 4 and "tools" not in e.rec):
        turns = [t for t in e.rec["conversations"] if t["from"] != "system"]
        e.rec["conversations"] = turns[1:]  # starts with the assistant
        e.defect, e.info["style"] = "role_order", "starts_with_assistant"
    for e in _pick(rng, dia, fm["sharegpt"], 3, where=lambda e: "tools" not in e.rec):
        turns = e.rec["conversations"]
        i = next(k for k, t in enumerate(turns) if t["from"] == "human")
        turns.insert(i + 1, {"from": "human", "value": rng.choice(["Please be brief.", "Thanks in advance!", "Any idea?"])})
        e.defect, e.info["style"] = "role_order", "two_user_turns"
    for e in _pick(rng, dia, fm["sharegpt"], 3, where=lambda e: "tools" not in e.rec):
        e.rec["conversations"] = [t for t in e.rec["conversations"] if t["from"] != "gpt"][:2]
        e.defect = "no_assistant_turn"
    for e in _pick(rng, summ, fm["messages"], 3):
        e.rec["messages"] = [m for m in e.rec["messages"] if m["role"] != "assistant"]
        e.defect = "no_assistant_turn"

    # Malformed inputs.
    insert_all(rng, qa, _malformed_jsonl([
        ("invalid_json", b'{"instruction": "What is the capital of Italy?", "input": "", "output": "Rome'),
        ("invalid_json", b"{'instruction': 'Name a primary colour.', 'output': 'Red'}"),
        ("invalid_utf8", b'{"instruction": "Spell caf\xe9 correctly.", "input": "", "output": "caf\xc3\xa9"}'),
        ("wrong_type", json.dumps({"instruction": "How many legs does a spider have?", "input": "", "output": 8}).encode()),
        ("wrong_type", json.dumps({"instruction": ["Name two planets.", "Be brief."], "input": "", "output": "Mars and Venus."}).encode()),
        ("missing_field", json.dumps({"instruction": "What is the boiling point of water at sea level?", "input": ""}).encode()),
        ("missing_field", json.dumps({"input": "", "output": "Blue."}).encode()),
        ("not_an_object", b'["What colour is the sky?", "Blue."]'),
    ]))
    insert_all(rng, summ, _malformed_jsonl([
        ("invalid_json", b'{"messages": [{"role": "user", "content": "Summarize: The council met on Monday."}, {"role": "assist'),
        ("invalid_utf8", b'{"messages": [{"role": "user", "content": "Summarize: \xff\xfe the market rose."}, '
                         b'{"role": "assistant", "content": "Markets rose."}]}'),
        ("wrong_type", json.dumps({"messages": [{"role": "user", "content": 12345}, {"role": "assistant", "content": "A number."}]}).encode()),
        ("wrong_type", json.dumps({"messages": [{"role": "user", "content": "Summarize the list."},
                                                {"role": "assistant", "content": [1, 2, 3]}]}).encode()),
        ("unknown_role", json.dumps({"messages": [{"role": "user", "content": "Summarize: It rained all day."},
                                                  {"role": "robot", "content": "It rained."}]}).encode()),
        ("missing_field", json.dumps({"conversation": [{"role": "user", "content": "Summarize this."}]}).encode()),
        ("wrong_type", json.dumps({"messages": "user: Summarize this. assistant: Done."}).encode()),
    ]))
    insert_all(rng, tra, _malformed_jsonl([
        ("invalid_json", b'{"instruction": "Translate into French.", "context": "Good night.", "response": "Bonne nuit."'),
        ("invalid_utf8", b'{"instruction": "Translate into German.", "context": "Thank you.", "response": "Danke sch\xf6n."}'),
        ("wrong_type", json.dumps({"instruction": "Translate into Spanish.", "context": "Yes.", "response": None,
                                   "category": "translate"}).encode()),
        ("missing_field", json.dumps({"context": "Hello.", "response": "Bonjour.", "category": "translate"}).encode()),
    ]))
    insert_all(rng, dia, [
        Entry(raw="conversation 17 was lost during export", defect="malformed", error="not_an_object"),
        Entry(raw={"id": "broken-1", "messages_v2": [{"from": "human", "value": "Hi"}]}, defect="malformed", error="missing_field"),
        Entry(raw={"conversations": [{"from": "human", "value": 42}, {"from": "gpt", "value": "The answer is 42."}]},
              defect="malformed", error="wrong_type"),
        Entry(raw={"conversations": [{"from": "human", "value": ["Hi", "there"]}, {"from": "gpt", "value": "Hello!"}]},
              defect="malformed", error="wrong_type"),
        Entry(raw={"conversations": [{"from": "narrator", "value": "It was a dark night."}, {"from": "gpt", "value": "Indeed."}]},
              defect="malformed", error="unknown_role"),
    ])
    insert_all(rng, code, [
        Entry(raw=["Write a Python function that returns 1.", "def one():\n    return 1\n", "extra column"], defect="malformed",
              error="extra_field"),
        Entry(raw=["Write a Python function that returns an empty list.", "def empty():\n    return []\n", "", "x"],
              defect="malformed", error="extra_field"),
        Entry(raw=["Write a Python function that adds two numbers."], defect="malformed", error="missing_field"),
    ])

    # Layout and write.
    out.mkdir(parents=True, exist_ok=True)
    (out / "raw").mkdir(exist_ok=True)
    (out / "evalsets").mkdir(exist_ok=True)
    files: dict[str, tuple[str, str, list]] = {
        "raw/qa_alpaca.jsonl": ("alpaca", "qa", qa),
        "raw/dialogue_sharegpt.json": ("sharegpt", "dialogue", dia),
        "raw/summarize_messages.jsonl.gz": ("messages", "summarize", summ),
        "raw/translate_dolly.jsonl": ("dolly", "translate", tra),
        "raw/code_prompt_completion.csv": ("prompt_completion", "code", code),
    }
    written = []

    def line_bytes(e):
        return e.raw if e.raw is not None else json.dumps(e.rec, ensure_ascii=False).encode("utf-8")

    for rel, (_, _, entries) in files.items():
        path = out / rel
        if rel.endswith(".jsonl") or rel.endswith(".jsonl.gz"):
            for i, e in enumerate(entries, 1):
                e.loc = {"file": rel, "line": i, "origin": f"{rel}:{i}"}
            data = b"".join(line_bytes(e) + b"\n" for e in entries)
            if rel.endswith(".gz"):
                buf = io.BytesIO()
                with gzip.GzipFile(filename="", mode="wb", fileobj=buf, compresslevel=9, mtime=0) as gz:
                    gz.write(data)
                data = buf.getvalue()
            path.write_bytes(data)
        elif rel.endswith(".json"):
            items = []
            for i, e in enumerate(entries):
                e.loc = {"file": rel, "index": i, "origin": f"{rel}:#{i}"}
                if e.raw is None:
                    e.rec = {"id": f"sg-{i:05d}", **e.rec}
                items.append(e.raw if e.raw is not None else e.rec)
            path.write_text(json.dumps(items, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
        else:
            buf = io.StringIO()
            w = csv.writer(buf, lineterminator="\n")
            w.writerow(["prompt", "completion"])
            for i, e in enumerate(entries):
                line = buf.getvalue().count("\n") + 1  # where the row starts: rows span lines
                e.loc = {"file": rel, "index": i, "line": line, "origin": f"{rel}:{line}"}
                w.writerow(e.raw if e.raw is not None else e.rec)
            path.write_bytes(buf.getvalue().encode("utf-8"))
        written.append(path)
    ev = out / "evalsets" / "sample_eval.jsonl"
    ev.write_bytes(b"".join(json.dumps(x, ensure_ascii=False).encode() + b"\n" for x in evalset))
    written.append(ev)

    # Ground truth.
    kinds: dict[str, list] = {}
    for rel, (_, _, entries) in files.items():
        for e in entries:
            if e.defect is None:
                continue
            item = dict(e.loc)
            for k, v in sorted(e.info.items()):
                if k == "dup_source":
                    continue
                item[k] = v.loc if isinstance(v, Entry) else v
            kinds.setdefault(e.defect, []).append(item)
    placeholder_inputs = [dict(e.loc, value=e.rec["input"]) for e in qa if e.rec is not None and e.defect is None
                          and e.rec.get("input") in _NOINPUT and e.rec.get("input")]
    kinds["placeholder_input"] = placeholder_inputs
    summary = {
        "generator": "sample_data/make_sample_data.py",
        "seed": DATA_SEED,
        "locations": "line: 1-based physical line (JSONL after gunzip; for CSV the line where the row starts, "
                     "the header being line 1); index: 0-based element of the JSON array or 0-based data row of "
                     "the CSV; origin: file:line, or file:#index for the JSON array, relative to sample_data/",
        "files": {},
        "defects": {},
        "evalset": {"file": "evalsets/sample_eval.jsonl", "items": len(evalset),
                    "leaked_items": sorted(x["id"] for x in leak_items)},
    }
    for rel, (fmt_name, task, entries) in files.items():
        n_bad = sum(e.defect == "malformed" for e in entries)
        n_def = sum(e.defect not in (None, "malformed") for e in entries)
        summary["files"][rel] = {"format": fmt_name, "task": task, "records": len(entries), "malformed": n_bad,
                                 "parsed": len(entries) - n_bad, "planted_defects": n_def,
                                 "clean": len(entries) - n_bad - n_def}
        if fmt_name == "dolly":
            # Dolly carries its own label: `task_field = "category"` reads it per record.
            cats: dict[str, int] = {}
            for e in entries:
                if e.rec is not None:
                    cats[e.rec["category"]] = cats.get(e.rec["category"], 0) + 1
            summary["files"][rel]["task_field"] = {"field": "category", "values": dict(sorted(cats.items()))}
    total = sum(f["parsed"] for f in summary["files"].values())
    for kind in sorted(kinds):
        summary["defects"][kind] = {"count": len(kinds[kind]), "rate": round(len(kinds[kind]) / total, 4),
                                    "expect": EXPECT[kind], "items": kinds[kind]}
    summary["totals"] = {"records": sum(f["records"] for f in summary["files"].values()),
                         "parsed": total, "malformed": sum(f["malformed"] for f in summary["files"].values())}
    dj = out / "defects.json"
    dj.write_text(json.dumps(summary, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    written.append(dj)
    return written


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=HERE, help="output folder (default: beside this script)")
    ap.add_argument("--only", choices=["tokenizer", "data", "all"], default="all")
    args = ap.parse_args(argv)
    written: list[Path] = []
    if args.only in ("tokenizer", "all"):
        written += build_tokenizer(args.out / "tokenizer")
    if args.only in ("data", "all"):
        written += build_data(args.out)
    for p in written:
        print(p)


if __name__ == "__main__":
    main()
