"""A pure-Python MT19937 that reproduces ``numpy.random.RandomState(seed).permutation(n)``.

The permuted-MNIST literature fixes its pixel permutation with NumPy's legacy generator:
``np.random.RandomState(92916).permutation(784)`` (expRNN, asRNN) and
``np.random.RandomState(1234).permutation(784)`` (nnRNN). Reproducing those exact permutations
lets pMNIST results be compared with the papers while this package depends on torch only.

What NumPy does for an integer seed and ``permutation(n)`` (numpy/random/_mt19937.pyx,
mtrand.pyx, distributions.c):

- seeding (``_legacy_seeding``): Matsumoto and Nishimura's ``init_genrand(seed)``;
- ``permutation(n)``: ``arr = arange(n)`` then the legacy ``shuffle``, a Fisher-Yates pass
  ``for i in n-1 .. 1: j = random_interval(i); swap(arr[i], arr[j])``;
- ``random_interval(max)``: rejection sampling on masked 32-bit draws (``mask`` = the smallest
  all-ones bit pattern >= ``max``; draw ``next_uint32() & mask`` until it is ``<= max``).
  For ``max`` above 2**32 - 1 NumPy draws 64-bit values (two 32-bit words, high word first);
  that branch is implemented too, though no realistic permutation needs it.
"""

from __future__ import annotations

_N = 624
_M = 397
_MATRIX_A = 0x9908B0DF
_UPPER = 0x80000000
_LOWER = 0x7FFFFFFF
_MASK32 = 0xFFFFFFFF


class MT19937:
    """The 32-bit Mersenne Twister, seeded like NumPy's legacy ``RandomState(int)``."""

    def __init__(self, seed: int):
        if not 0 <= seed <= _MASK32:
            raise ValueError(f"seed must be between 0 and 2**32 - 1 (as in NumPy), got {seed}")
        mt = [0] * _N
        mt[0] = seed
        for i in range(1, _N):
            prev = mt[i - 1]
            mt[i] = (1812433253 * (prev ^ (prev >> 30)) + i) & _MASK32
        self._mt = mt
        self._pos = _N  # forces a twist before the first draw, as init_genrand does

    def _twist(self) -> None:
        mt = self._mt
        for i in range(_N):
            y = (mt[i] & _UPPER) | (mt[(i + 1) % _N] & _LOWER)
            v = mt[(i + _M) % _N] ^ (y >> 1)
            if y & 1:
                v ^= _MATRIX_A
            mt[i] = v
        self._pos = 0

    def next_uint32(self) -> int:
        if self._pos >= _N:
            self._twist()
        y = self._mt[self._pos]
        self._pos += 1
        y ^= y >> 11
        y ^= (y << 7) & 0x9D2C5680
        y ^= (y << 15) & 0xEFC60000
        y ^= y >> 18
        return y

    def next_uint64(self) -> int:
        hi = self.next_uint32()
        return (hi << 32) | self.next_uint32()

    def random_interval(self, max_value: int) -> int:
        """A uniform integer in ``[0, max_value]`` exactly as NumPy's ``random_interval``."""
        if max_value == 0:
            return 0
        mask = max_value
        for shift in (1, 2, 4, 8, 16, 32):
            mask |= mask >> shift
        if max_value <= _MASK32:
            while True:
                value = self.next_uint32() & mask
                if value <= max_value:
                    return value
        while True:
            value = self.next_uint64() & mask
            if value <= max_value:
                return value


def legacy_permutation(seed: int, n: int) -> list[int]:
    """``numpy.random.RandomState(seed).permutation(n)`` as a list, for an integer seed.

    >>> legacy_permutation(0, 5)  # same as np.random.RandomState(0).permutation(5)
    [2, 0, 1, 3, 4]
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = MT19937(seed)
    arr = list(range(n))
    for i in range(n - 1, 0, -1):
        j = rng.random_interval(i)
        arr[i], arr[j] = arr[j], arr[i]
    return arr
