"""Per-item metrics, in two scoring modes (docs/evaluation-protocol.md §3, §6).

``fixed`` (default) corrects the reference harness's bugs; ``mistral-compat`` reproduces mistral-evals' numbers,
quirks included. Every function here is pure: text in, float in [0, 1] out.
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence
from functools import lru_cache

from rapidfuzz.distance import Levenshtein

from pixtral.evals.errors import EvalConfigError
from pixtral.evals.parsing import parse_flex2

SCORING_MODES = ("fixed", "mistral-compat")
FIXED, COMPAT = SCORING_MODES


def check_mode(mode: str) -> str:
    if mode not in SCORING_MODES:
        raise EvalConfigError(f"scoring mode must be one of {SCORING_MODES}, not {mode!r}")
    return mode


# ---------------------------------------------------------------- shared helpers (docs/evaluation-protocol.md §3.0)


def normalize_string(s: str) -> str:
    """Remove one pair of surrounding quotes (``"..."`` or ``'...'``); nothing else."""
    if s and s[0] == s[-1] and s[0] in "\"'":  # as mistral-evals: a lone quote becomes ""
        return s[1:-1]
    return s


_END_PUNCT = set(string.punctuation) - {"%"}


def remove_end_punctuation(s: str) -> str:
    """Strip trailing ASCII punctuation except ``%``, and trailing whitespace of any script (``str.isspace``:
    a no-break space too, as mistral-evals strips it)."""
    end = len(s)
    while end and (s[end - 1] in _END_PUNCT or s[end - 1].isspace()):
        end -= 1
    return s[:end]


# ---------------------------------------------------------------- relaxed correctness (docs/evaluation-protocol.md §3.3)

_HAS_DIGIT = re.compile(r"\d")
_LETTER_ANSWER = re.compile(r"^\(?([A-Za-z])\)?(?=$|[\s.:,)\]])")


def _has_digit(text: str, mode: str) -> bool:
    """compat: ``str.isdigit`` as mistral-evals (true for ``²`` and ``①``, which no number parse accepts);
    fixed: decimal digits only (``\\d``: ``3``, ``٣``, ``３``)."""
    if mode == COMPAT:
        return any(ch.isdigit() for ch in text)
    return _HAS_DIGIT.search(text) is not None


def _preprocess(text: str, mode: str) -> str:
    if not _has_digit(text, mode):
        text = normalize_string(text)
        # fixed: "Yes." is "Yes" (docs/evaluation-protocol.md §3.3, a reference quirk)
        return remove_end_punctuation(text.strip()) if mode == FIXED else text
    return remove_end_punctuation(text).replace(",", "").replace("$", "")


def _to_float(text: str) -> tuple[float | None, bool]:
    text = text.strip()
    try:
        return float(text.rstrip("%")), text.endswith("%")
    except ValueError:
        return None, False


def _list_elements(text: str, brackets_required: bool) -> list[str] | None:
    """``"[2, 5]"`` -> ``["2", "5"]``; without brackets only when allowed (flex2 deletes them from answers)."""
    text = text.strip()
    if text[:1] in "[(" and text[-1:] in "])":
        text = text[1:-1]
    elif brackets_required:
        return None
    return [part.strip() for part in text.split(",")]


def _relaxed_one(prediction: str, target: str, mode: str) -> bool:
    if mode == FIXED:
        prediction, target = prediction.strip(), target.strip()
        # MathVista's list answers ("[2, 5]"): compared element by element, brackets optional in the answer
        # (compat keeps the reference's behaviour: flex2 deletes the answer's brackets, so they never match)
        target_list = _list_elements(target, brackets_required=True)
        if target_list is not None and len(target_list) > 1:
            predicted = _list_elements(prediction, brackets_required=False)
            return len(predicted) == len(target_list) and all(
                _relaxed_one(p, t, mode) for p, t in zip(predicted, target_list, strict=True)
            )
    pred = _preprocess(prediction, mode)
    tgt = _preprocess(target, mode)
    p, p_pct = _to_float(pred)
    t, t_pct = _to_float(tgt)
    if p is not None and t is not None:
        candidates = [(p, t)]
        if p_pct:
            candidates.append((p / 100.0, t))
        if t_pct:
            candidates.append((p, t / 100.0))
        return any(abs(a - b) / max(abs(b), 1e-10) <= 0.05 for a, b in candidates)
    if len(tgt) == 1 and tgt.isalpha():
        # compat: the first character only, so "Blue" matches "B" (docs/evaluation-protocol.md §3.3)
        if mode == COMPAT:
            if pred:
                return pred[0].lower() == tgt.lower()
        else:
            m = _LETTER_ANSWER.match(pred.strip())
            return bool(m) and m.group(1).lower() == tgt.lower()
    if mode == FIXED:
        return " ".join(pred.lower().split()) == " ".join(tgt.lower().split())
    return pred.lower() == tgt.lower()


def relaxed_correctness(prediction: str | None, targets: Sequence[str], mode: str = FIXED) -> float:
    """1.0 if the parsed prediction matches any target: numbers within 5% (percent-aware), letters, text."""
    if not prediction:
        return 0.0
    return float(any(_relaxed_one(prediction, str(t), mode) for t in targets))


# ---------------------------------------------------------------- anywhere in answer (docs/evaluation-protocol.md §3.5)


def _as_number(ref: str) -> int | float | None:
    try:
        n = float(ref)
    except ValueError:
        return None
    if n != n or n in (float("inf"), float("-inf")):
        return None
    return int(n) if n.is_integer() else n


def _bounded_occurrence(text: str, number: str) -> bool:
    """``number`` occurs in ``text`` not glued to other digits ("6" is not in "16", "2016" or "6.5")."""
    start = text.find(number)
    while start >= 0:
        end = start + len(number)
        before = text[start - 1] if start else ""
        after = text[end : end + 2]
        glued_before = before.isdigit() or (before in (".", ","))
        glued_after = after[:1].isdigit() or (after[:1] in (".", ",") and after[1:2].isdigit())
        if not glued_before and not glued_after:
            return True
        start = text.find(number, start + 1)
    return False


def anywhere_in_answer(response: str, targets: Sequence[str], mode: str = FIXED) -> float:
    """Flexible Level 3's match: does a reference appear anywhere in the raw response?

    compat: numbers as raw substrings ("6" matches "16"); the text candidates are tried once any reference is
    non-numeric, and are then built from *every* reference ("was 1e3" counts beside a text reference, not
    alone); they are compared against the *un-lowercased* response (bug B8: capitalised references never
    match). fixed: number matches need digit boundaries, text candidates come from the non-numeric references
    only (so "is 6" cannot match "is 6.5"), and the response is lowercased too.
    """
    text_targets = []
    for ref in targets:
        ref = str(ref)
        n = _as_number(ref)
        if n is None:
            text_targets.append(ref)
            continue
        forms = {format(n, ","), str(n), str(n) + "%"}
        if mode == COMPAT:
            if any(f in response for f in forms):
                return 1.0
        elif any(_bounded_occurrence(response, f) for f in forms):
            return 1.0
    if mode == COMPAT and text_targets:
        text_targets = [str(ref) for ref in targets]
    haystack = response if mode == COMPAT else response.lower()
    for ref in text_targets:
        for cand in (f"is {ref}", f"was {ref}", f" {ref}.", f"are {ref}", f"\n\n{ref}"):
            if cand.lower() in haystack:
                return 1.0
    return 0.0


def flex3_correctness(
    response: str,
    targets: Sequence[str],
    mode: str = FIXED,
    l2: float | None = None,
    anywhere: float | None = None,
) -> float:
    """Flexible Level 3.

    compat (= ``anywhere_in_answer_relaxed_correctness``): the Level-2 score when Level 2 parses something,
    the anywhere match only when it parses nothing. fixed (the paper's definition): correct if Level 2 is
    correct *or* the reference appears anywhere.
    """
    parsed = parse_flex2(response)
    if l2 is None:
        l2 = relaxed_correctness(parsed, targets, mode)
    if mode == COMPAT and parsed is not None:
        return l2
    if mode == FIXED and l2 == 1.0:
        return 1.0
    return anywhere if anywhere is not None else anywhere_in_answer(response, targets, mode)


# ---------------------------------------------------------------- ANLS (docs/evaluation-protocol.md §3.2)


def _anls_norm(s: str) -> str:
    return remove_end_punctuation(" ".join(s.lower().split()).strip())


def anls(prediction: str | None, references: Sequence[str], mode: str = FIXED) -> float:
    """Average Normalized Levenshtein Similarity against the closest reference.

    fixed: scores below 0.5 become 0 (the standard threshold); compat: threshold 0 (bug B9).
    """
    if not references:
        return 0.0
    pred = _anls_norm(prediction or "")
    best_nl = 1.0
    for ref in references:
        r = _anls_norm(str(ref))
        longest = max(len(r), len(pred))
        nl = 0.0 if longest == 0 else Levenshtein.distance(r, pred) / longest
        best_nl = min(best_nl, nl)
    value = 1.0 - best_nl
    threshold = 0.5 if mode == FIXED else 0.0
    return 0.0 if value < threshold else value


# ---------------------------------------------------------------- VQA accuracy (docs/evaluation-protocol.md §3.1)

# The official VQA evaluation normaliser (EvalAI / vqaEval.py), as lmms-eval and VLMEvalKit use it.
_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's",
    "howd": "how'd", "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm",
    "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll",
    "let's": "let's", "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've",
    "mightn'tve": "mightn't've", "mightve": "might've", "mustnt": "mustn't", "mustve": "must've",
    "neednt": "needn't", "notve": "not've", "oclock": "o'clock", "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't",
    "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's", "shouldve": "should've",
    "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd", "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've", "someonell": "someone'll",
    "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's", "thered": "there'd",
    "thered've": "there'd've", "there'dve": "there'd've", "therere": "there're", "theres": "there's",
    "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've", "theyll": "they'll",
    "theyre": "they're", "theyve": "they've", "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've",
    "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll", "whatre": "what're",
    "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd", "wheres": "where's",
    "whereve": "where've", "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've", "wholl": "who'll",
    "whos": "who's", "whove": "who've", "whyll": "why'll", "whyre": "why're", "whys": "why's",
    "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll",
    "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've", "youd": "you'd",
    "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're", "youve": "you've",
}  # fmt: skip
_NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}  # fmt: skip
_ARTICLES = {"a", "an", "the"}
# The official regex has a typo ("?!<=" for "?<!"), so "2." becomes "2"; kept for identical scores.
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_STRIP = re.compile(r"(\d)(,)(\d)")
_PUNCT = [
    ";",
    "/",
    "[",
    "]",
    '"',
    "{",
    "}",
    "(",
    ")",
    "=",
    "+",
    "\\",
    "_",
    "-",
    ">",
    "<",
    "@",
    "`",
    ",",
    "?",
    "!",
]


def _process_punctuation(text: str) -> str:
    out = text
    comma_number = _COMMA_STRIP.search(text) is not None
    for p in _PUNCT:
        if (p + " " in text or " " + p in text) or comma_number:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD_STRIP.sub("", out)


def _process_digit_article(text: str) -> str:
    words = []
    for word in text.lower().split():
        word = _NUMBER_WORDS.get(word, word)
        if word not in _ARTICLES:
            words.append(_CONTRACTIONS.get(word, word))
    return " ".join(words)


@lru_cache(maxsize=200_000)
def vqa_normalize(answer: str) -> str:
    """The official VQA answer normaliser: punctuation, case, number words, articles, contractions."""
    answer = answer.replace("\n", " ").replace("\t", " ").strip()
    return _process_digit_article(_process_punctuation(answer))


def vqa_match(prediction: str | None, references: Sequence[str], mode: str = FIXED) -> float:
    """VQA accuracy.

    fixed: official normalisation of both sides and the mean of ``min(1, matches/3)`` over the leave-one-out
    subsets of the references (10-choose-9 for VQAv2's ten answers). compat: only quote stripping and
    ``min(1, matches/3)`` over all references (bug B5: case- and punctuation-sensitive).
    """
    refs = [str(r) for r in references]
    if not refs:
        return 0.0
    if mode == COMPAT:
        pred = normalize_string(prediction or "")
        return min(1.0, sum(normalize_string(r) == pred for r in refs) / 3)
    pred = vqa_normalize(prediction or "")
    norm = [vqa_normalize(r) for r in refs]
    if len(norm) == 1:
        return float(norm[0] == pred)
    matches = [r == pred for r in norm]
    total = sum(matches)
    return sum(min(1.0, (total - m) / 3) for m in matches) / len(norm)
