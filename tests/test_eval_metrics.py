"""Every benchmark metric against worked examples computed by hand."""
import pytest

from lladax.evals import metrics


def test_levenshtein_worked_examples():
  assert metrics.levenshtein('kitten', 'sitting') == 3
  assert metrics.levenshtein('', 'abc') == 3
  assert metrics.levenshtein('flaw', 'lawn') == 2
  assert metrics.levenshtein('same', 'same') == 0


def test_needle_score_is_100_for_the_keyword_else_a_fifth_of_the_similarity():
  needle = 'The mascot is a purple walrus.'
  assert metrics.needle_score(' a purple walrus!', 'purple walrus', needle) == 100
  # The keyword test is case-sensitive, as NeedleBench's `keyword in prediction`.
  assert metrics.needle_score('Purple Walrus', 'purple walrus', 'abc') < 100
  # 'abc' vs 'abd': distance 1 over 3 characters -> 100 * 2/3, times 0.2.
  assert metrics.needle_score('abc', 'zzz', 'abd') == pytest.approx(0.2 * 100 * 2 / 3)
  # Whitespace is removed before the distance: 'a b c' equals 'abc'.
  assert metrics.needle_score('a  b\nc', 'zzz', 'abc') == pytest.approx(20.0)
  assert metrics.needle_score('', 'zzz', 'abcd') == 0.0


def test_exact_match_reads_the_first_line_ignoring_case_spacing_and_final_period():
  assert metrics.exact_match(' smoked  Paprika.\nThe end', 'smoked paprika.') == 100
  assert metrics.exact_match('smoked paprika', 'smoked paprika.') == 100
  assert metrics.exact_match('smoked paprika and salt.', 'smoked paprika.') == 0
  assert metrics.exact_match('', 'x') == 0


def test_ruler_string_match_all_and_part():
  pred = 'The special numbers are 1234567 and 7654321'
  assert metrics.string_match_all(pred, ['1234567', '7654321', '1111111']) == pytest.approx(200 / 3)
  assert metrics.string_match_part(pred, ['1234567', '1111111']) == 100
  assert metrics.string_match_part(pred, ['1111111']) == 0
  assert metrics.string_match_all('ANSWER: Paris', ['paris']) == 100  # case-insensitive
  assert metrics.ruler_postprocess('  a\x00b\t ') == 'a\nb'


def test_qa_f1_uses_squad_normalisation():
  # 'the' and punctuation dropped: [cat, sat, on, mat] vs [cat, on, mat]: P 3/4, R 1.
  assert metrics.qa_f1_score('The cat sat on the mat!', 'cat on mat') == pytest.approx(6 / 7)
  assert metrics.qa_f1_score('dog', 'cat') == 0.0
  assert metrics.normalize_answer('An  Apple, the PIE.') == 'apple pie'


def test_qa_f1_zh_counts_characters():
  # Characters [北, 京, 是, 首, 都] (the full stop removed) vs [北, 京]: P 2/5, R 1 -> 4/7.
  # (LongBench's jieba words [北京, 是, 首都] vs [北京] would give 1/2.)
  assert metrics.qa_f1_zh_score('北京是首都。', '北京') == pytest.approx(4 / 7)
  assert metrics.qa_f1_zh_score('北京', '北京') == 1.0
  assert metrics.zh_tokens('用Python写 code，好') == ['用', 'Python', '写', 'code，', '好']
  # LongBench's punctuation list has the closing 》 but not the opening 《; kept as it is.
  assert metrics.normalize_zh_answer('《北京》， Hi!') == '《北京hi'


def test_rouge_l_is_the_lcs_f1():
  # LCS 'the cat on the mat' = 5 tokens: P 5/6, R 5/5 -> F 10/11.
  assert metrics.rouge_score('the cat sat on the mat', 'the cat on the mat') == pytest.approx(10 / 11)
  assert metrics.rouge_score('', 'x') == 0.0
  assert metrics.rouge_score('a b', 'c d') == 0.0
  # Characters for Chinese: LCS 今天/今天 of 今天天气 (4) and 今天好 (3): P 2/4, R 2/3.
  assert metrics.rouge_zh_score('今天天气', '今天好') == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))


def _longbench_classification(prediction, ground_truth, all_classes):
  """LongBench's loop as its source reads (removal while iterating), for comparison."""
  em_match_list = [c for c in all_classes if c in prediction]
  for match_term in em_match_list:
    if match_term in ground_truth and match_term != ground_truth:
      em_match_list.remove(match_term)
  return 1.0 / len(em_match_list) if ground_truth in em_match_list else 0.0


@pytest.mark.parametrize('prediction,reference,classes,want', [
    ('Human being', 'Human being', ['Human', 'Human being', 'Location'], 1.0),
    ('Location or Human', 'Location', ['Human', 'Location'], 0.5),
    ('Entity', 'Location', ['Entity', 'Location'], 0.0),
    # The removal skips the element after a removed one: 'ab' survives, so 1/2, not 1.
    ('abc', 'abc', ['a', 'ab', 'abc'], 0.5),
    # 'a' and then 'ab' are dropped as substrings of the gold label; 'b' stays: 1/2.
    ('a ab abc b', 'abc', ['a', 'b', 'ab', 'abc'], 0.5),
])
def test_classification_score_matches_longbench_including_its_quirk(prediction, reference,
                                                                    classes, want):
  got = metrics.classification_score(prediction, reference, all_classes=classes)
  assert got == pytest.approx(want)
  assert got == pytest.approx(_longbench_classification(prediction, reference, classes))


def test_count_retrieval_and_code_similarity():
  assert metrics.count_score('There are 3 paragraphs, I think 3 or 4', '3') == pytest.approx(2 / 3)
  assert metrics.count_score('no numbers', '3') == 0.0
  assert metrics.retrieval_score('Paragraph 12', 'Paragraph 12') == 1.0
  assert metrics.retrieval_score('Paragraph 1 or Paragraph 12', 'Paragraph 12') == 0.5
  assert metrics.retrieval_zh_score('答案是段落5', '段落5') == 1.0
  # LCS('abc', 'abd') = 2: round(100 * 4 / 6) = 67.
  assert metrics.similarity_ratio('abc', 'abd') == 67
  # The fence and the comment are skipped; 'x = foo(1)' vs 'x = foo(2)': LCS 9 of 20 -> 0.9.
  assert metrics.code_sim_score('```python\n# call it\nx = foo(1)\n', 'x = foo(2)') == 0.9


def test_best_over_answers_takes_the_best_gold_answer():
  assert metrics.best_over_answers('qa_f1', 'Paris', ['London', 'Paris']) == 1.0
  assert metrics.best_over_answers('count', '7', ['6']) == 0.0


# OpenCompass' LongBench evaluators (the papers' protocol), worked by hand; the golden tests in
# test_eval_longbench_protocol.py compare them to the evaluators themselves.


def test_opencompass_chinese_f1_counts_jieba_words():
  # jieba: [北京, 是, 首都, 。]; the full stop normalises to '' and is dropped: P 1/3, R 1 -> 1/2.
  assert metrics.jieba_words('北京是首都。') == ['北京', '是', '首都', '。']
  assert metrics.oc_f1_score('北京是首都。', ['北京'], 'zh') == pytest.approx(0.5)
  assert metrics.oc_f1_score('The cat sat on the mat!', ['x', 'cat on mat']) == pytest.approx(6 / 7)


def test_opencompass_rouge_l_is_the_rouge_packages():
  # Words as sets: the reference has 4 distinct words, the prediction 5; the union LCS covers
  # the reference's 4: R 1, P 4/5, F = 2PR / (P + R + 1e-8).
  want = 2 * 0.8 / (1.8 + 1e-8)
  assert metrics.oc_rouge_score('the cat sat on the mat', ['the cat on the mat']) == \
      pytest.approx(want, rel=1e-12)
  assert metrics.oc_rouge_score('', ['a b']) == 0.0      # the package raises; scored 0
  assert metrics.oc_rouge_score('x', ['', 'x']) == pytest.approx(1 - 5e-9)


def test_opencompass_sums_count_retrieval_and_classification_over_references():
  assert metrics.oc_count_score('5', ['5', '5']) == 2.0
  assert metrics.oc_retrieval_score('Paragraph 3', ['Paragraph 3', 'Paragraph 4']) == 1.0
  assert metrics.oc_retrieval_score('3', ['Paragraph 3', 'Paragraph 3']) == 2.0
  assert metrics.oc_classification_score('Human being', ['Human being', 'Human'],
                                         ['Human', 'Human being']) == 1.5
  with pytest.raises(ValueError, match='names no paragraph'):
    metrics.oc_retrieval_score('1', ['the first'])


def test_fuzz_ratio_rounds_as_each_fuzzywuzzy_back_end():
  # LCS 1 of 80 characters: python-Levenshtein's ratio 1 - 78/80 = 0.025000000000000022 rounds
  # to 3; difflib's 2/80 = 0.025 gives 2.5, which rounds to even: 2.
  a, b = 'a' + 'x' * 39, 'a' + 'y' * 39
  assert (metrics.fuzz_ratio(a, b), metrics.fuzz_ratio(a, b, 'difflib')) == (3, 2)
  assert metrics.similarity_ratio(a, b) == 3
  assert metrics.fuzz_ratio('', '') == 100 and metrics.fuzz_ratio('', 'x') == 0
  assert metrics.oc_code_sim_score('```\n# c\nx = foo(1)', ['y', 'x = foo(2)']) == 0.9
