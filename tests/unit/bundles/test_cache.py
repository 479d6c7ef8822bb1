from avatar_bundles.cache import Cached, MemoryCache, NegativeCache


def entry(size: int) -> Cached:
    return Cached.from_body(b"x" * size, 0.0)


def test_memory_is_bounded_by_bytes_as_well_as_entries() -> None:
    cache = MemoryCache(max_entries=100, max_bytes=1000)
    for key in "abcd":
        cache.put(key, entry(300))
    assert cache.get("a") is None  # 4 x 300 > 1000: the least recent went
    assert all(cache.get(k) is not None for k in "bcd")
    cache.put("b", entry(900))  # replacing counts the new size only
    assert cache.get("c") is None
    assert cache.get("d") is None
    assert cache.get("b") is not None


def test_memory_is_bounded_by_entries() -> None:
    cache = MemoryCache(max_entries=2, max_bytes=10**6)
    for key in "abc":
        cache.put(key, entry(1))
    assert cache.get("a") is None


def test_negative_entries_expire_and_are_bounded() -> None:
    now = [0.0]
    unknown = NegativeCache(30, max_entries=2, clock=lambda: now[0])
    unknown.add("a")
    assert "a" in unknown
    now[0] = 31
    assert "a" not in unknown
    for key in "xyz":
        unknown.add(key)
    assert "x" not in unknown
    assert "z" in unknown


def test_a_zero_ttl_remembers_nothing() -> None:
    unknown = NegativeCache(0)
    unknown.add("a")
    assert "a" not in unknown
