"""Oracles: generators that read the answer off the prompt. Run through a job in place of the
model, a perfect score shows that the prompt holds what the task needs (the needle where it
should be, the question asked of it), and that extraction and scoring are right."""
from __future__ import annotations

import collections
import re
from typing import Callable, Sequence


class Oracle:
  """The `Generator` interface around solve(prompt) -> completion."""

  def __init__(self, solve: Callable[[str], str]):
    self.solve = solve

  def generate(self, prompts: Sequence[str], cfg=None, seed: int = 0) -> list[str]:
    del cfg, seed
    return [self.solve(p) for p in prompts]


def niah(needles: Sequence[dict]) -> Oracle:
  """Completes the stem with the needle whose question the prompt asks, if and only if that
  needle sits in the document before the question."""

  def solve(prompt: str) -> str:
    for n in needles:
      asked = prompt.rfind(n['question'])
      found = prompt.find(n['needle'])
      if asked >= 0 and 0 <= found < asked:
        return ' ' + n['answer']
    return ''

  return Oracle(solve)


def last_section(prompt: str, marker: str) -> str:
  """The text after the last `marker` (tasks with an in-context example repeat their header)."""
  at = prompt.rfind(marker)
  return prompt[at:] if at >= 0 else prompt


def ruler_niah(prompt: str) -> str:
  question = re.findall(r'What are all the special magic (\w+) for (.+?) mentioned in the '
                        r'provided text\?', prompt)
  if not question:
    return ''
  kind, asked = question[-1]
  keys = [k.strip() for k in re.split(r',\s*(?:and\s+)?|\s+and\s+', asked) if k.strip()]
  values = []
  for key in keys:
    values += re.findall(rf'One of the special magic {kind} for {re.escape(key)} is: (\S+?)\.(?:\s|$)',
                         prompt)
  return ' ' + ', '.join(values) + '.'


def ruler_vt(prompt: str) -> str:
  section = last_section(prompt, 'Memorize and track the chain')
  value = re.findall(r'assigned the value (\d+)', section)
  if not value:
    return ''
  names, frontier = [], {value[-1]}
  assignments = re.findall(r'VAR (\w+) = (VAR \w+|\d+)', section)
  changed = True
  while changed:
    changed = False
    for name, source in assignments:
      source = source.replace('VAR ', '')
      if source in frontier and name not in frontier:
        frontier.add(name)
        names.append(name)
        changed = True
  return ' ' + ' '.join(names)


def ruler_cwe(prompt: str) -> str:
  section = last_section(prompt, 'Below is a numbered list of words.')
  section = section.split('Question:')[0]
  counts = collections.Counter(re.findall(r'\d+\. (\S+)', section))
  return ' ' + ' '.join(f'{i + 1}. {w}' for i, (w, _) in enumerate(counts.most_common(10)))


def ruler_fwe(prompt: str) -> str:
  section = last_section(prompt, 'Read the following coded text')
  text = section.split('Find the three most frequently appeared coded words.', 1)[-1]
  text = text.split('Question:')[0]
  counts = collections.Counter(w for w in text.split() if w != '....')
  return ' ' + ' '.join(w for w, _ in counts.most_common(3))


def ruler(qa_answers: dict[str, list[str]] | None = None) -> Oracle:
  """Solves every RULER task from the prompt; QA questions are looked up in `qa_answers`
  (question -> answers, from the user's SQuAD / HotpotQA file), asked only if the prompt asks."""

  def solve(prompt: str) -> str:
    if 'special magic' in prompt:
      return ruler_niah(prompt)
    if 'chain(s) of variable assignment' in prompt:
      return ruler_vt(prompt)
    if 'numbered list of words' in prompt:
      return ruler_cwe(prompt)
    if 'coded text' in prompt:
      return ruler_fwe(prompt)
    question = re.findall(r'Question: (.+?)(?: Answer:)?$', prompt.strip())
    if question and qa_answers and question[-1] in qa_answers:
      return ' ' + qa_answers[question[-1]][0]
    return ''

  return Oracle(solve)


def lookup(answers: dict[str, str]) -> Oracle:
  """Answers a prompt it was told the answer to (the gold answer oracle for LongBench)."""
  return Oracle(lambda prompt: answers.get(prompt, ''))
