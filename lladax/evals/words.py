"""Built-in vocabulary for generated text: keys of RULER-style needles, common-word lists and
filler prose when no local corpus is given. Ordinary English words, written here so nothing is
downloaded (RULER draws the same kind of words from the wonderwords package). Used by lladax's
own protocols; the papers' RULER reads wonderwords' own lists (ruler_opencompass.py)."""
from __future__ import annotations

import numpy as np

ADJECTIVES = tuple('''
able ancient angry bitter brave bright broad calm careful cheap clean clever cold cool crisp
curious damp dark deep dense distant dry dull eager early easy empty faint fair famous fancy
fast fierce flat fresh friendly gentle giant glad golden grand great green grim happy hard
heavy hidden hollow honest huge humble idle jolly keen kind large late lazy light little
lively lonely long loud lucky mellow mighty modest narrow neat noble odd old pale patient
plain polite proud quick quiet rapid rare red rich rough round rural rusty sacred shallow
sharp shiny short silent silver simple slow small smooth soft solid sour spare steep still
strange strong sudden sweet swift tall tame tender thick thin tidy tiny tough vast warm weak
wide wild wise young
'''.split())

NOUNS = tuple('''
acorn anchor apple arrow badge barn basket beacon bell bench blanket boat bottle bridge brook
bucket cabin camera candle canyon carpet castle cave chair cliff clock cloud coin comet
compass cottage crate crown desert diamond door dragon drum eagle engine feather fence ferry
field flag flute forest fountain garden gate glacier globe hammer harbor harvest helmet hill
island jacket jewel kettle kite ladder lake lantern leaf lemon library lighthouse magnet
maple market meadow mirror mountain needle orchard otter palace parrot pebble pencil piano
pillow planet pocket pond puzzle quilt rabbit raven ribbon river rocket saddle sail scarf
shadow shell shovel signal spoon statue stone storm tablet temple thunder tiger tower train
tunnel valley violin wagon wallet whistle window wizard
'''.split())

VERBS = tuple('''
admires answers borrows builds carries chases cleans collects crosses draws explores fixes
follows gathers guards helps hides holds joins keeps leaves lifts meets moves opens paints
passes plants pulls pushes reaches reads repairs saves sees shares shows signals studies
teaches tracks trades visits washes watches
'''.split())

_PLACES = ('near', 'beyond', 'under', 'beside', 'behind', 'across', 'inside', 'above')


def filler_sentences(rng: np.random.Generator, n: int) -> list[str]:
  """n sentences of plain generated prose ("The quiet otter carries a golden lantern near the
  old bridge."): a stand-in haystack when the user gives no corpus."""
  def pick(words):
    return words[int(rng.integers(len(words)))]
  out = []
  for _ in range(n):
    out.append(f'The {pick(ADJECTIVES)} {pick(NOUNS)} {pick(VERBS)} a {pick(ADJECTIVES)} '
               f'{pick(NOUNS)} {pick(_PLACES)} the {pick(ADJECTIVES)} {pick(NOUNS)}.')
  return out


def pseudo_words(rng: np.random.Generator, n: int, exclude: set[str] = frozenset()) -> list[str]:
  """n distinct pronounceable made-up words (consonant-vowel syllables) for lists that need more
  words than any built-in list holds."""
  consonants, vowels = 'bdfgklmnprstvz', 'aeiou'
  out: list[str] = []
  seen = set(exclude)
  while len(out) < n:
    syllables = int(rng.integers(2, 4))
    word = ''.join(consonants[int(rng.integers(len(consonants)))] + vowels[int(rng.integers(5))]
                   for _ in range(syllables))
    if word not in seen:
      seen.add(word)
      out.append(word)
  return out
