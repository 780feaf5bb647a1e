"""ROUGE and its Porter stemmer against Google's `rouge-score` (the figures papers report) on real text."""

import os
import random
import re

import pytest

from ssl_jax import porter, summarize

from conftest import SHARED_DATA as SHARED

EWT = os.path.join(SHARED, 'ud_ewt', 'en_ewt-ud-dev.conllu')
SST2 = os.path.join(SHARED, 'sst2', 'train.tsv')
TYPES = ('rouge1', 'rouge2', 'rougeL', 'rougeLsum')

# Summaries written for this test against news-style references, one sentence a line, so that
# stemming matters (killed/kills, rescuers/rescued, flooding/floods) and Lsum sees several lines.
PAIRS = [
    ('Rescuers pulled twelve miners from the flooded shaft on Tuesday.\nAll of them are being treated in hospital.',
     'Twelve miners were rescued on Tuesday after floods trapped them.\nThe men were taken to hospital.\n'
     'Officials said the rescuers worked through the night.'),
    ('The central bank raised interest rates again.\nMarkets fell sharply after the announcement.',
     'Interest rates were raised by the central bank for the third time this year.\n'
     'Stock markets were falling within minutes of the decision.'),
    ('A storm kills three people and leaves thousands without power.',
     'Three people were killed as the storm swept the coast.\nThousands of homes lost power overnight.'),
    ('Scientists say the new vaccine is safe.\nTrials involved more than 30,000 volunteers in 12 countries.',
     'The vaccine proved safe and effective in trials.\nMore than 30,000 volunteers took part across twelve '
     'countries.\nRegulators are expected to decide next month.'),
    ('The city council voted to close the library.', 'Councillors voted to keep the library open.'),
    ('', 'An empty summary scores nothing.'),
    ('Nothing in common here.', 'Entirely different words appear.'),
]


def ewt_documents():
  """The dev split's documents as lists of sentences (its `# text =` lines)."""
  documents = []
  with open(EWT, encoding='utf-8') as f:
    for line in f:
      if line.startswith('# newdoc'):
        documents.append([])
      elif line.startswith('# text =') and documents:
        documents[-1].append(line[len('# text ='):].strip())
  return [d for d in documents if len(d) >= 3]


def ewt_pairs(count=150, seed=0):
  """Reference: a document's first sentences, one a line. Summary: some of its sentences with words
  dropped, reordered or taken from another document, so that every degree of overlap occurs."""
  rng = random.Random(seed)
  documents = ewt_documents()
  pairs = []
  for _ in range(count):
    doc, other = rng.sample(documents, 2)
    reference = doc[:rng.randint(1, min(4, len(doc)))]
    lines = []
    for sentence in rng.sample(doc, rng.randint(1, min(3, len(doc)))):
      tokens = sentence.split()
      kept = [t for t in tokens if rng.random() > 0.3] or tokens[:1]
      if rng.random() < 0.3:
        rng.shuffle(kept)
      lines.append(' '.join(kept))
    if rng.random() < 0.3:
      lines.append(rng.choice(other))
    pairs.append(('\n'.join(lines), '\n'.join(reference)))
  return pairs


def assert_equal_to_rouge_score(pairs):
  rouge_scorer = pytest.importorskip('rouge_score.rouge_scorer', reason='rouge-score is in tests/requirements.txt')
  worst = 0.0
  for stem in (False, True):
    scorer = rouge_scorer.RougeScorer(list(TYPES), use_stemmer=stem)
    for summary, reference in pairs:
      theirs, ours = scorer.score(reference, summary), summarize.rouge(summary, reference, stem=stem)
      for name in TYPES:
        for field, value in (('recall', theirs[name].recall), ('precision', theirs[name].precision),
                             ('f1', theirs[name].fmeasure)):
          worst = max(worst, abs(ours[name][field] - value))
          assert ours[name][field] == pytest.approx(value, abs=1e-6), (name, field, stem, summary, reference)
  return worst


def test_rouge_equals_rouge_score_with_and_without_stemming():
  assert_equal_to_rouge_score(PAIRS)
  # Stemming is what moves this one: "kills" and "killed" are both "kill".
  plain, stemmed = summarize.rouge(*PAIRS[2][:2]), summarize.rouge(*PAIRS[2][:2], stem=True)
  assert stemmed['rouge1']['f1'] > plain['rouge1']['f1']
  lsum = summarize.rouge_lsum(*PAIRS[0])
  assert lsum != summarize.rouge_l(*PAIRS[0])   # lines matter to Lsum, not to L


@pytest.mark.skipif(not os.path.isfile(EWT), reason=f'{EWT} is absent (the shared data sets)')
def test_rouge_equals_rouge_score_on_treebank_sentences():
  pairs = ewt_pairs()
  assert_equal_to_rouge_score(pairs)
  stemmed = [summarize.words(s + ' ' + r, stem=True) != summarize.words(s + ' ' + r) for s, r in pairs]
  assert sum(stemmed) > 0.9 * len(pairs)   # the stemmer was at work on nearly every pair


def hand_lsum_example():
  # Lin (2004), section 3.2: reference "w1 w2 w3 w4 w5", candidates "w1 w2 w6 w7 w8" and
  # "w1 w3 w8 w9 w5": the union LCS is w1 w2 w3 w5, 4 of the reference's 5 words.
  return summarize.rouge_lsum('w1 w2 w6 w7 w8\nw1 w3 w8 w9 w5', 'w1 w2 w3 w4 w5')


def test_lsum_by_hand():
  assert hand_lsum_example() == pytest.approx({'recall': 4 / 5, 'precision': 4 / 10, 'f1': 2 * 0.8 * 0.4 / 1.2})


@pytest.mark.skipif(not (os.path.isfile(EWT) and os.path.isfile(SST2)), reason='the shared data sets are absent')
def test_porter_stemmer_equals_nltks_on_every_word_of_two_corpora():
  nltk_porter = pytest.importorskip('nltk.stem.porter', reason='nltk comes with rouge-score')
  theirs = nltk_porter.PorterStemmer()
  vocabulary = set()
  for path in (EWT, SST2):
    with open(path, encoding='utf-8') as f:
      vocabulary |= set(re.findall(r'[a-z0-9]+', f.read().lower()))
  vocabulary |= {'skies', 'dying', 'ties', 'cries', 'agreed', 'hopping', 'fizzed', 'filing', 'enjoy', 'spy',
                 'conformabli', 'radicalli', 'vileli', 'archaeology', 'controll', 'syzygy', 'yyyy'}
  assert len(vocabulary) > 15000
  different = [(w, theirs.stem(w), porter.stem(w)) for w in sorted(vocabulary) if theirs.stem(w) != porter.stem(w)]
  assert not different, different[:20]


def test_porter_stemmer_on_the_papers_examples():
  examples = {'caresses': 'caress', 'ponies': 'poni', 'cats': 'cat', 'agreed': 'agre', 'plastered': 'plaster',
              'motoring': 'motor', 'hopping': 'hop', 'falling': 'fall', 'filing': 'file', 'happy': 'happi',
              'relational': 'relat', 'generalization': 'gener', 'hopefulness': 'hope', 'adjustment': 'adjust',
              'controlling': 'control', 'killed': 'kill', 'summarisation': 'summaris'}
  assert {w: porter.stem(w) for w in examples} == examples
