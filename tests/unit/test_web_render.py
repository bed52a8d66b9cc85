"""Latencies on the pages read as people read them."""

from storefront.web.render import duration


def test_latency_is_shown_in_a_readable_unit():
    assert duration(0.007) == "7 µs"
    assert duration(2.4) == "2.4 ms"
    assert duration(1500) == "1.5 s"
    assert duration(None) == "—"
