"""The Porter stemmer (Porter 1980, "An algorithm for suffix stripping"), as ROUGE uses it.

`rouge-score` (Google's ROUGE, whose figures papers report) stems with NLTK's PorterStemmer in
its default mode, which adds a few changes to the 1980 rules; they are kept here so that our
ROUGE equals theirs: a handful of irregular forms looked up whole; words of one or two letters
left alone; "ies"/"ied" of four letters -> "ie"; "ied" -> "i"; y -> i only after a consonant
that is not the whole stem; "bli" -> "ble" (Porter's own later change, for "abli"); "alli"
-> "al" tried before the other step-2 rules; "fulli" -> "ful"; "logi" -> "log"; and a stem of a
vowel and a consonant counts as ending consonant-vowel-consonant.

Each step is a list of (suffix, replacement, condition) rules: the first rule whose suffix the
word ends with decides, and if its condition on the stem fails the word is left as it is.
"""

from typing import Callable, List, Optional, Sequence, Tuple

VOWELS = frozenset('aeiou')

IRREGULAR = {'skies': 'sky', 'sky': 'sky', 'dying': 'die', 'lying': 'lie', 'tying': 'tie', 'news': 'news',
             'innings': 'inning', 'inning': 'inning', 'outings': 'outing', 'outing': 'outing',
             'cannings': 'canning', 'canning': 'canning', 'howe': 'howe', 'proceed': 'proceed',
             'exceed': 'exceed', 'succeed': 'succeed'}

Rule = Tuple[str, str, Optional[Callable[[str], bool]]]


def consonants(word: str) -> List[bool]:
  """Per letter: is it a consonant? A 'y' is one at the start or after a vowel."""
  flags: List[bool] = []
  for i, letter in enumerate(word):
    flags.append(letter not in VOWELS and (letter != 'y' or i == 0 or not flags[i - 1]))
  return flags


def measure(stem: str) -> int:
  """m in [C](VC)^m[V]: how many times a vowel is followed by a consonant."""
  flags = consonants(stem)
  return sum(1 for a, b in zip(flags, flags[1:]) if not a and b)


def has_vowel(stem: str) -> bool:
  return not all(consonants(stem))


def ends_double_consonant(word: str) -> bool:
  return len(word) >= 2 and word[-1] == word[-2] and consonants(word)[-1]


def ends_cvc(word: str) -> bool:
  """*o: consonant, vowel, consonant (the last not w, x or y); or a two-letter vowel-consonant."""
  flags = consonants(word)
  if len(word) >= 3 and flags[-3] and not flags[-2] and flags[-1] and word[-1] not in 'wxy':
    return True
  return len(word) == 2 and not flags[0] and flags[1]


def _positive(stem: str) -> bool:
  return measure(stem) > 0


def _above_one(stem: str) -> bool:
  return measure(stem) > 1


def apply_rules(word: str, rules: Sequence[Rule]) -> str:
  for suffix, replacement, condition in rules:
    if word.endswith(suffix):
      stem = word[:len(word) - len(suffix)]
      return stem + replacement if condition is None or condition(stem) else word
  return word


def step1a(word: str) -> str:
  if len(word) == 4 and word.endswith('ies'):
    return word[:-3] + 'ie'
  return apply_rules(word, [('sses', 'ss', None), ('ies', 'i', None), ('ss', 'ss', None), ('s', '', None)])


def step1b(word: str) -> str:
  if word.endswith('ied'):
    return word[:-3] + ('ie' if len(word) == 4 else 'i')
  if word.endswith('eed'):
    return word[:-1] if _positive(word[:-3]) else word
  for suffix in ('ed', 'ing'):
    if word.endswith(suffix) and has_vowel(word[:-len(suffix)]):
      stem = word[:-len(suffix)]
      break
  else:
    return word
  # The E comes back on -AT, -BL and -IZ so that step 4 can see -ATE, -BLE, -IZE.
  if stem.endswith(('at', 'bl', 'iz')):
    return stem + 'e'
  if ends_double_consonant(stem):
    return stem if stem[-1] in 'lsz' else stem[:-1]
  if measure(stem) == 1 and ends_cvc(stem):
    return stem + 'e'
  return stem


def step1c(word: str) -> str:
  return apply_rules(word, [('y', 'i', lambda stem: len(stem) > 1 and consonants(stem)[-1])])


STEP2: List[Rule] = [(suffix, replacement, _positive) for suffix, replacement in [
    ('ational', 'ate'), ('tional', 'tion'), ('enci', 'ence'), ('anci', 'ance'), ('izer', 'ize'), ('bli', 'ble'),
    ('alli', 'al'), ('entli', 'ent'), ('eli', 'e'), ('ousli', 'ous'), ('ization', 'ize'), ('ation', 'ate'),
    ('ator', 'ate'), ('alism', 'al'), ('iveness', 'ive'), ('fulness', 'ful'), ('ousness', 'ous'), ('aliti', 'al'),
    ('iviti', 'ive'), ('biliti', 'ble'), ('fulli', 'ful')]]


def step2(word: str) -> str:
  if word.endswith('alli') and _positive(word[:-4]):
    return step2(word[:-4] + 'al')
  # NLTK's "logi" rule measures the stem with its "l" still on.
  return apply_rules(word, STEP2 + [('logi', 'log', lambda stem: _positive(stem + 'l'))])


STEP3: List[Rule] = [(suffix, replacement, _positive) for suffix, replacement in [
    ('icate', 'ic'), ('ative', ''), ('alize', 'al'), ('iciti', 'ic'), ('ical', 'ic'), ('ful', ''), ('ness', '')]]

STEP4: List[Rule] = [(suffix, '', _above_one) for suffix in [
    'al', 'ance', 'ence', 'er', 'ic', 'able', 'ible', 'ant', 'ement', 'ment', 'ent']] + [
    ('ion', '', lambda stem: _above_one(stem) and stem[-1] in 'st')] + [(suffix, '', _above_one) for suffix in [
        'ou', 'ism', 'ate', 'iti', 'ous', 'ive', 'ize']]


def step5(word: str) -> str:
  if word.endswith('e'):
    stem = word[:-1]
    m = measure(stem)
    if m > 1 or (m == 1 and not ends_cvc(stem)):
      word = stem
  if word.endswith('ll') and _above_one(word[:-1]):
    word = word[:-1]
  return word


def stem(word: str) -> str:
  """The stem of one lower-case word, e.g. 'summarisation' -> 'summaris', 'killed' -> 'kill'."""
  if word in IRREGULAR:
    return IRREGULAR[word]
  if len(word) <= 2:
    return word
  word = step1c(step1b(step1a(word)))
  word = apply_rules(step2(word), STEP3)
  return step5(apply_rules(word, STEP4))
