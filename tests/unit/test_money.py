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


@pytest.mark.parametrize("price,bps,fee", [
    (2000, 2000, 400),  # exact: 20% of 0.002 USD
    (1, 2000, 0),  # 0.2 -> 0
    (4, 2000, 0),  # 0.8 -> 0: rounded down, not to the nearest
    (5, 2000, 1),
    (9, 2000, 1),  # 1.8 -> 1
    (3, 5000, 1),  # 1.5 -> 1: a half goes to the seller (not half-up, not half-even -> 2)
    (5, 5000, 2),  # 2.5 -> 2 (half-up would give 3)
    (7, 3333, 2),  # 2.3331 -> 2
    (1_000_003, 2000, 200_000),  # 200000.6 -> 200000
    (10**12 + 7, 1, 100_000_000),  # 100000000.0007 -> 100000000
    (999_999, 10_000, 999_999),  # the whole price
    (999_999, 0, 0),
    (0, 2000, 0),
])
def test_split_rounds_the_fee_down_and_the_seller_gets_the_rest(price, bps, fee):
    assert split(price, bps) == (price - fee, fee)


@pytest.mark.parametrize("bps", [-1, 10_001])
def test_split_refuses_fee_out_of_range(bps):
    with pytest.raises(ValueError):
        split(100, bps)


def test_absurd_exponents_are_refused_quickly():
    import pytest

    from metering import to_micro

    for text in ("1e999999999", "1e999990", "1e16"):
        with pytest.raises(InvalidInput):
            to_micro(text)
    assert to_micro("1e3") == 1_000_000_000
