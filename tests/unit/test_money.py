from decimal import Decimal

import pytest

from metering import format_usd, split, to_micro
from serving import InvalidInput


@pytest.mark.parametrize("text,micro", [("0.002", 2000), ("19.00", 19_000_000), ("0", 0),
                                        ("1.000001", 1_000_001), (Decimal("0.5"), 500_000)])
def test_decimal_strings_convert_exactly(text, micro):
    assert to_micro(text) == micro


@pytest.mark.parametrize("bad", ["0.0000001", "abc", "NaN", "Infinity", 0.1])
def test_refuses_what_is_not_exact_money(bad):
    with pytest.raises(InvalidInput):
        to_micro(bad)


@pytest.mark.parametrize("micro,text", [(2000, "0.002"), (1_000_000, "1.00"), (0, "0.00"),
                                        (1_500, "0.0015"), (-2_000, "-0.002"),
                                        (123_456_789, "123.456789")])
def test_format(micro, text):
    assert format_usd(micro) == text


@pytest.mark.parametrize("price", [0, 1, 3, 7, 2000, 999_999, 10**12 + 7])
@pytest.mark.parametrize("bps", [0, 1, 2000, 3333, 10_000])
def test_split_adds_up_exactly_and_never_favors_platform(price, bps):
    share, fee = split(price, bps)
    assert share + fee == price
    assert fee == price * bps // 10_000
    assert share >= 0 and fee >= 0


def test_split_refuses_fee_out_of_range():
    with pytest.raises(ValueError):
        split(100, 10_001)


def test_absurd_exponents_are_refused_quickly():
    import pytest

    from metering import to_micro

    for text in ("1e999999999", "1e999990", "1e16"):
        with pytest.raises(InvalidInput):
            to_micro(text)
    assert to_micro("1e3") == 1_000_000_000
