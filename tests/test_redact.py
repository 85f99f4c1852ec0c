"""Redaction before the question log: real-looking questions in Chinese, English and mixed, each with its
exact masked text, and ordinary numbers (amounts, dates, times, counts) that must stay as written."""

from __future__ import annotations

import pytest

from kbsearch.questionlog.redact import fold, redact

MASKED = [
    # Chinese mobiles, in every common spelling
    ("我的手机号是13812345678，麻烦尽快联系我", "我的手机号是[phone]，麻烦尽快联系我"),
    ("电话：+86 138 1234 5678", "电话：[phone]"),
    ("联系方式 138-1234-5678 或 (+86)13912345678", "联系方式 [phone] 或 [phone]"),
    ("我的手机+8613812345678收不到验证码", "我的手机[phone]收不到验证码"),
    ("手机号１３８１２３４５６７８换了", "手机号[phone]换了"),  # full-width digits
    ("１３８－１２３４－５６７８", "[phone]"),  # full-width digits and dashes
    ("13812345678 13912345678", "[phone] [phone]"),
    ("tel:13812345678", "tel:[phone]"),
    # landlines with an area code
    ("公司座机010-12345678，分机808", "公司座机[phone]，分机808"),
    ("深圳办公室电话 0755-8888 6666", "深圳办公室电话 [phone]"),
    ("座机(0755)88886666打不通", "座机[phone]打不通"),
    # international and North American numbers
    ("Call me at +1 (415) 555-0132 please", "Call me at [phone] please"),
    ("my number is 415-555-0132, thanks", "my number is [phone], thanks"),
    ("or (415) 555-0132 / 1-800-555-0199", "or [phone] / [phone]"),
    ("London office: +44 20 7946 0958", "London office: [phone]"),
    # bank cards and accounts
    ("退款请打到我的卡6222 0212 3456 7890 123上", "退款请打到我的卡[card]上"),
    ("card 4111-1111-1111-1111 was charged twice", "card [card] was charged twice"),
    ("卡号6222021234567890123，户名张三", "卡号[card]，户名张三"),
    ("订单号 20240501123456 一直没发货", "订单号 [card] 一直没发货"),  # 14 digits: an account-like number
    # resident IDs (18 digits, X check digit, grouped 6 8 4, old 15-digit)
    ("身份证号110101199003071234", "身份证号[id]"),
    ("身份证 11010119900307123X 实名认证失败", "身份证 [id] 实名认证失败"),
    ("身份证 110101 19900307 123x 核验不通过", "身份证 [id] 核验不通过"),
    ("老身份证号码110101900307123还能用吗", "老身份证号码[id]还能用吗"),
    # e-mail, also glued to Chinese text and with full-width ＠ and ．
    ("我的邮箱是zhang.san@example.com谢谢", "我的邮箱是[email]谢谢"),
    ("email me: John.Doe+orders@mail.example.co.uk.", "email me: [email]."),
    ("发到13812345678@163.com吧", "发到[email]吧"),  # e-mail first: its local part is a phone number
    ("zhangsan＠qq．com 收不到邮件", "[email] 收不到邮件"),
    # other long numbers
    ("会员号8812345，积分没到账", "会员号[number]，积分没到账"),
    ("订单12345678和订单87654321都没到", "订单[number]和订单[number]都没到"),
    ("My member code 1234567 and ZIP 94105", "My member code [number] and ZIP 94105"),
    # mixed
    ("我的PayPal是li.lei@gmail.com, phone 139 8765 4321，卡4111111111111111", "我的PayPal是[email], phone [phone]，卡[card]"),
]

UNCHANGED = [
    "我花了500元买的鞋，2024-05-01下单",
    "客服时间9:00-18:00，退款3-5个工作日到账",
    "在 2024-05-01 09:00–18:00 之间",
    "It takes 3 days, costs $1,299.00 and ships on 2024/05/01",
    "iPhone 15 Pro 256GB 满300减50",
    "2024年5月1日下单，订单金额1299元",
    "我的卡尾号是1234",
    "云杉Plus会员年费99元，每月4张券",
    "Do you ship to postcode 94105?",
    "退货地址是北京市朝阳区建国路88号",
    "快递单号查不到怎么办？",
    "How do I reset my password?",
    "",
]


@pytest.mark.parametrize(("text", "expected"), MASKED)
def test_personal_data_is_masked(text: str, expected: str) -> None:
    assert redact(text) == expected


@pytest.mark.parametrize("text", UNCHANGED)
def test_ordinary_numbers_stay(text: str) -> None:
    assert redact(text) == text


def test_fold_keeps_lengths_and_maps_full_width() -> None:
    text = "手机１３８－１２３４，邮箱ａ＠ｂ．ｃｏｍ\u3000ﬁ"
    folded = fold(text)
    assert len(folded) == len(text)
    assert folded == "手机138-1234,邮箱a@b.com ﬁ"  # ﬁ folds to two letters: kept as written


def test_redaction_is_idempotent() -> None:
    for text, expected in MASKED:
        assert redact(expected) == expected
