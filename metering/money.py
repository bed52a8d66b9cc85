"""Money as integer micro-units (1e-6 USD): parsing, formatting, and the seller/platform split."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

from serving.errors import InvalidInput

MICRO = 1_000_000
MAX_MICRO = 2**63 - 1  # amounts are BIGINT columns and Redis integers: int64


def to_micro(amount: Decimal | str | int, *, field: str | None = None) -> int:
    """Exact conversion of a USD decimal ("0.002") to micro-units; refuses sub-micro amounts
    with a 422 ``invalid_amount`` (its message names ``field`` when given)."""
    def bad(why: str) -> InvalidInput:
        return InvalidInput(f"{field}: {why}" if field else why, code="invalid_amount")

    if isinstance(amount, float):
        raise bad("money is never a float; send a decimal string such as \"10.00\"")
    if isinstance(amount, int):  # exact; str() of a huge int would raise ValueError
        if abs(amount) > MAX_MICRO // MICRO:
            raise bad("too large an amount (at most " + format_usd(MAX_MICRO) + ")")
        return amount * MICRO
    try:
        value = Decimal(str(amount)) if not isinstance(amount, Decimal) else amount
    except InvalidOperation as exc:
        raise bad(f"{amount!r} is not a decimal amount") from exc
    if not value.is_finite():
        raise bad(f"{amount!r} is not a finite amount")
    if value and value.adjusted() > 15:  # beyond any real amount; also keeps "1e999999" cheap
        raise bad(f"{amount} is too large an amount")
    # Integer arithmetic on the digits, never Decimal's 28-digit context: that rounded
    # "1.00000000000000000000000000001" to 1000000 and "1e-1000000000" to 0.
    sign, digits, exponent = value.as_tuple()
    assert isinstance(exponent, int)  # finite
    coefficient = "".join(map(str, digits)).rstrip("0") or "0"
    exponent += len(digits) - len(coefficient) if coefficient != "0" else 0
    if coefficient != "0" and exponent < -6:
        raise bad(f"{amount} has more than 6 decimal places")
    micro = 0 if coefficient == "0" else int(coefficient) * 10 ** (exponent + 6)
    if micro > MAX_MICRO:
        raise bad(f"{amount} is too large an amount (at most {format_usd(MAX_MICRO)})")
    return -micro if sign else micro


def format_usd(micro: int) -> str:
    """Micro-units as a USD decimal string with at least 2 and at most 6 decimals."""
    sign = "-" if micro < 0 else ""
    whole, frac = divmod(abs(micro), MICRO)
    digits = f"{frac:06d}".rstrip("0")
    return f"{sign}{whole}.{digits.ljust(2, '0')}"


def split(price: int, fee_bps: int) -> tuple[int, int]:
    """(seller share, platform fee) of a charge; they always add up to ``price`` exactly.

    The fee is rounded down, so rounding never takes from the seller.
    """
    if not 0 <= fee_bps <= 10_000:
        raise ValueError("platform fee must be between 0 and 10000 basis points")
    fee = price * fee_bps // 10_000
    return price - fee, fee
