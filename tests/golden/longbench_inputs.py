"""LongBench inputs shared by the golden recorder and the tests: a few records per dataset in
LongBench's JSON-lines format (English or Chinese as the dataset is), predictions to score with
each evaluator, and prompts to truncate. Plain literals only, so every Python writes the same.

Some records hold braces on purpose: OpenCompass fills a template by replacing '{input}', then
'{context}', then '{answers}' (or '{all_labels}') with '' in turn, so a placeholder inside a
field is filled by the fields replaced after it.
"""
from __future__ import annotations

import json
import os

_EN_STORY = ('Mara kept the lighthouse on Gull Rock for eleven winters. Each evening she wound '
             'the clockwork that turned the lamp, and each morning she wrote the weather in a '
             'green ledger. When the supply boat stopped coming she rowed to the mainland '
             'herself, and the harbour master called her the stubborn keeper.')
_EN_PASSAGES = ('Passage 1:\nThe Orford Bridge crosses the river Ash at Millbrook. It was '
                'designed by Helen Carr and opened in 1911.\nPassage 2:\nHelen Carr was an '
                'engineer born in Leeds in 1874. She also designed the Kestrel Viaduct.\n'
                'Passage 3:\nMillbrook is a market town with a population of 12,000.')
_ZH_TEXT = ('长江是中国最长的河流，全长约六千三百公里。它发源于青藏高原，流经十一个省级行政区，'
            '最后在上海注入东海。长江流域是中国重要的农业和工业地区。')
_ZH_MEETING = ('主持人：今天我们讨论下个季度的预算。张经理：市场部需要增加百分之十的经费。'
               '李主任：研发部希望保持现有水平。主持人：那我们先确定市场部的方案。')
_CODE = ('import os\n\n\ndef read_config(path):\n    """Reads {answers} from a file."""\n'
         '    with open(path) as f:\n        data = {k: v for k, v in (l.split("=") for l in f)}\n'
         '    return data\n\n\ndef main():\n    config = read_config("app.cfg")\n')


def _record(dataset: str, index: int, language: str, context: str, input_: str,
            answers: list[str], all_classes: list[str] | None = None) -> dict:
  return {'input': input_, 'context': context, 'answers': answers,
          'length': len(context.split()) if language == 'en' else len(context),
          'dataset': dataset, 'language': language, 'all_classes': all_classes,
          '_id': f'{dataset}-{index:04d}'}


TREC_CLASSES = ['Human being', 'Human', 'Location', 'Other location', 'Entity', 'Date',
                'Description of something']
LSHT_CLASSES = ['农业、农村', '体育', '经济', '电子信息产业', '文化、休闲娱乐']


def records() -> dict[str, list[dict]]:
  """Dataset name -> its records, in LongBench's order of datasets."""
  r = _record
  return {
      'narrativeqa': [
          r('narrativeqa', 0, 'en', _EN_STORY, 'What did Mara write each morning?',
            ['The weather in a green ledger.']),
          # A field holding placeholders: '{input}' stays, '{answers}' becomes ''.
          r('narrativeqa', 1, 'en', _EN_STORY + ' She once wrote {input} and {answers}.',
            'Why was she called {context}?', ['She rowed to the mainland herself']),
      ],
      'qasper': [
          r('qasper', 0, 'en', 'Abstract: We train a parser on 40k sentences of the Penn '
            'Treebank and evaluate on section 23, reaching 94.1 F1.',
            'What dataset do they use?', ['Penn Treebank', 'the Penn Treebank (PTB)']),
          r('qasper', 1, 'en', 'Introduction: The model is not evaluated on other languages.',
            'Do they evaluate on Chinese?', ['No', 'unanswerable']),
      ],
      'multifieldqa_en': [
          r('multifieldqa_en', 0, 'en', _EN_STORY, 'How many winters did Mara keep the light?',
            ['Eleven winters.']),
      ],
      'multifieldqa_zh': [
          r('multifieldqa_zh', 0, 'zh', _ZH_TEXT, '长江在哪里注入东海？', ['上海']),
          r('multifieldqa_zh', 1, 'zh', _ZH_TEXT, '长江全长多少？', ['约六千三百公里']),
      ],
      'hotpotqa': [
          r('hotpotqa', 0, 'en', _EN_PASSAGES,
            'In which city was the designer of the Orford Bridge born?', ['Leeds']),
      ],
      '2wikimqa': [
          r('2wikimqa', 0, 'en', _EN_PASSAGES, 'Who designed the Kestrel Viaduct?',
            ['Helen Carr']),
      ],
      'musique': [
          r('musique', 0, 'en', _EN_PASSAGES,
            'When did the bridge over the Ash at the market town open?', ['1911']),
      ],
      'dureader': [
          r('dureader', 0, 'zh', '文档1：长江是中国最长的河流。\n文档2：黄河是中国第二长的河流。',
            '中国最长的河流', ['长江是中国最长的河流。']),
      ],
      'gov_report': [
          # No '{input}' in the template and no input in the entry: the text stays as it is.
          r('gov_report', 0, 'en', 'The agency reviewed 42 grant programs {input} in 2019. '
            'It found that 12 lacked performance goals. GAO recommends that the agency set '
            'goals for each program.', '',
            ['GAO found that 12 of 42 grant programs lacked goals and recommends setting them.']),
      ],
      'qmsum': [
          r('qmsum', 0, 'en', 'Project Manager: Let us decide the remote colour. Designer: '
            'Yellow tests well with children. Marketing: Then yellow it is.',
            'What did the group decide about the colour?',
            ['The group chose yellow because it tested well with children.']),
      ],
      'multi_news': [
          r('multi_news', 0, 'en', 'Passage 1:\nA storm closed the coastal road on Monday.\n'
            'Passage 2:\nCrews reopened the road on Wednesday after clearing fallen trees.', '',
            ['– A storm closed the coastal road Monday; crews reopened it Wednesday.']),
      ],
      'vcsum': [
          r('vcsum', 0, 'zh', _ZH_MEETING, '', ['会议讨论了下个季度的预算，先确定市场部的方案。']),
      ],
      'trec': [
          # '{all_labels}' (the output column) is replaced by ''.
          r('trec', 0, 'en', 'Question: Who wrote Hamlet?\nType: Human being\nQuestion: Where '
            'is Lyon?\nType: Other location {all_labels}', 'Question: Where is Paris?\nType:',
            ['Other location'], TREC_CLASSES),
          r('trec', 1, 'en', 'Question: When did the war end?\nType: Date',
            'Question: Who painted the ceiling?\nType:', ['Human being'], TREC_CLASSES),
      ],
      'triviaqa': [
          r('triviaqa', 0, 'en', 'Passage: The Thames flows through London.\nQuestion: Which '
            'river flows through London?\nAnswer: Thames', 'Passage: Paris lies on the Seine.\n'
            'Question: Which river flows through Paris?\nAnswer:', ['Seine', 'River Seine']),
      ],
      'samsum': [
          r('samsum', 0, 'en', 'Dialogue: Ann: Lunch?\nBob: Sure, at noon.\nSummary: Ann and Bob '
            'will have lunch at noon.', 'Dialogue: Kim: I lost my keys.\nLee: Check the car.\n'
            'Summary: ', ['Kim lost her keys and Lee suggests checking the car.']),
      ],
      'lsht': [
          r('lsht', 0, 'zh', '新闻：球队在比赛中获胜。\n类别：体育\n新闻：粮食产量创新高。\n类别：农业、农村',
            '新闻：手机芯片销量增长。\n类别：', ['电子信息产业'], LSHT_CLASSES),
      ],
      'passage_count': [
          r('passage_count', 0, 'en', 'Paragraph 1: The sky is blue.\n\nParagraph 2: Grass is '
            'green.\n\nParagraph 3: The sky is blue.', '', ['2']),
      ],
      'passage_retrieval_en': [
          r('passage_retrieval_en', 0, 'en', 'Paragraph 1: Bees make honey.\n\nParagraph 2: '
            'Whales are mammals.\n\nParagraph 3: Iron rusts in water.',
            'The largest animals breathe air and feed their young milk.', ['Paragraph 2']),
      ],
      'passage_retrieval_zh': [
          r('passage_retrieval_zh', 0, 'zh', '段落1：蜜蜂采蜜。\n\n段落2：鲸鱼是哺乳动物。\n\n段落3：铁会生锈。',
            '铁在潮湿的环境中会被氧化。', ['段落3']),
      ],
      'lcc': [
          r('lcc', 0, 'python', _CODE, '', ['    print(config["name"])']),
      ],
      'repobench-p': [
          # input is replaced first, so its '{context}' is then filled with the context.
          r('repobench-p', 0, 'python', '# path: util.py\ndef add(a, b):\n    return a + b\n',
            '# path: main.py\nfrom util import add\n# see {context}\ntotal = 0\n',
            ['total = add(total, 1)']),
      ],
  }


def write(folder: str, layout: str = 'flat') -> str:
  """Writes <folder>/<dataset>.jsonl ('flat', lladax's data_dir) or <folder>/data/<dataset>.jsonl
  ('hf', the folder OpenCompass' Longbench loading script reads); returns the jsonl folder."""
  out = folder if layout == 'flat' else os.path.join(folder, 'data')
  os.makedirs(out, exist_ok=True)
  for name, rows in records().items():
    with open(os.path.join(out, f'{name}.jsonl'), 'w', encoding='utf-8') as f:
      for row in rows:
        f.write(json.dumps(row, ensure_ascii=False) + '\n')
  return out


def predictions(dataset: str, answers: list[str]) -> list[str]:
  """Predictions scored against one record's answers with the dataset's own postprocessor and
  evaluator: the gold answer, the gold answer as a model might wrap it, a partial one, none."""
  gold = answers[0]
  half = gold[:max(1, len(gold) // 2)]
  return [gold, f'\n\n{gold}\nThe rest of the output.', f' {half} and more', '']


# Scores of single predictions against chosen references, per evaluator: the edge cases.
METRIC_CASES = {
    'f1_en': [
        ('The cat sat on the mat!', ['cat on mat']),
        ('Paris, France', ['London', 'Paris']),
        ('a an the', ['the']),
        ('', ['x']),
    ],
    'f1_zh': [
        ('北京是中国的首都。', ['北京']),
        ('我用Python写代码', ['Python代码']),
        ('，。', ['北京']),
        ('长江', ['黄河', '长江']),
    ],
    'rouge_en': [
        ('the cat sat on the mat. the dog ran.', ['the cat is on the mat. a dog ran fast.']),
        ('a a a b', ['a b b']),
        ('word', ['other word', 'word']),
        ('', ['x y']),        # empty hypothesis: the package raises, scored 0
        ('...', ['a b']),     # only periods: no sentence left, raises too
        (' . ', ['a']),
        ('Crews cleared trees, then the road reopened', ['The road reopened after crews '
                                                         'cleared the trees.']),
    ],
    'rouge_zh': [
        ('今天天气很好，我们去公园散步。', ['今天天气不错，我们去公园。', '天气很好。']),
        ('北京是首都', ['北京']),
        ('', ['今天']),
        ('会议 讨论 了 预算', ['会议讨论了预算']),
    ],
    'classification': [
        ('Human being', ['Human being'], ['Human', 'Human being', 'Location']),
        ('Location or Human', ['Location'], ['Human', 'Location']),
        ('Entity', ['Location'], ['Entity', 'Location']),
        ('abc', ['abc'], ['a', 'ab', 'abc']),
        ('a ab abc b', ['abc'], ['a', 'b', 'ab', 'abc']),
        ('Human being', ['Human being', 'Human'], ['Human', 'Human being']),
        ('nothing', ['Date'], ['Date', 'Human']),
    ],
    'retrieval_en': [
        ('Paragraph 12', ['Paragraph 12']),
        ('Paragraph 1 or Paragraph 12', ['Paragraph 12']),
        ('no number', ['Paragraph 3']),
        ('3', ['Paragraph 3', 'Paragraph 4']),
    ],
    'retrieval_zh': [
        ('段落5', ['段落5']),
        ('答案是段落5和段落6', ['段落5']),
        ('第2段', ['段落3']),
    ],
    'count': [
        ('There are 3 paragraphs, I think 3 or 4', ['3']),
        ('no numbers', ['3']),
        ('5', ['5', '5']),
    ],
    'code_sim': [
        ('```python\n# call it\nx = foo(1)\n', ['x = foo(2)']),
        ('', ['x']),
        ('', ['']),
        ('\n\nreturn a\nb', ['return b', 'return a']),
        ('a' + 'x' * 39, ['a' + 'y' * 39]),   # 2.5: the back ends round it differently
        ('// c\n# d', ['x']),
        # 200+ characters, all frequent: difflib's junk heuristic leaves it no match to start
        # from (0), while python-Levenshtein's ratio is 99.5 (100).
        ('ba' * 110, ['ab' * 111]),
        ('    print(config["name"])', ['    print(config["name"])']),
        ('total = add(total, 2)', ['total = add(total, 1)']),
    ],
}


class BosBytes:
  """A byte tokenizer that, like a Hugging Face tokenizer with add_special_tokens=True, puts a
  special token (BOS 257) before the text: truncation must keep it as the first id."""
  BOS = 257

  def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
    return ([self.BOS] if add_special_tokens else []) + list(text.encode('utf-8'))

  def decode(self, ids, skip_special_tokens: bool = False) -> str:
    del skip_special_tokens
    return bytes(int(i) for i in ids if 0 <= int(i) < 256).decode('utf-8', errors='replace')


# (prompt, max_seq_len) pairs the wrapper's drop_middle truncates: odd and even lengths, a prompt
# one token over, one exactly at the limit, and a Chinese prompt cut inside a character.
TRUNCATION_CASES = [
    ('The quick brown fox jumps over the lazy dog. ' * 3, 40),
    ('The quick brown fox jumps over the lazy dog. ' * 3, 41),
    ('abcdefghij', 10),
    ('abcdefghij', 11),
    ('abcdefghij', 9),
    ('长江是中国最长的河流。' * 4, 25),
]
# The tokens the stand-in model "generates": text, an EOS (256), more text, a mask (258).
GENERATED = list(b' Leeds') + [256] + list(b'\nmore') + [258]
