//! numpy's legacy `RandomState` (MT19937), as far as LM-BFF's split generator uses it.
//!
//! Byte-identical k-shot splits need the same draws as `np.random.seed(s)` followed by
//! `np.random.shuffle` and `np.random.permutation`, and pandas' `sample(random_state=42)`, which
//! takes the first rows of a seed-42 permutation. numpy seeds an integer with the classic
//! `init_genrand`, bounds integers by mask-and-reject (never modulo) and shuffles Fisher-Yates
//! from the end; each is reproduced here exactly.

const N: usize = 624;
const M: usize = 397;

/// A Mersenne Twister with numpy's legacy seeding and bounded-integer method.
#[derive(Clone)]
pub struct RandomState {
    state: [u32; N],
    index: usize,
}

impl RandomState {
    /// `np.random.RandomState(seed)` / `np.random.seed(seed)` for a 32-bit seed.
    pub fn new(seed: u32) -> RandomState {
        let mut state = [0u32; N];
        state[0] = seed;
        for i in 1..N {
            let prev = state[i - 1];
            state[i] = 1_812_433_253u32.wrapping_mul(prev ^ (prev >> 30)).wrapping_add(i as u32);
        }
        RandomState { state, index: N }
    }

    /// The next tempered 32-bit output.
    pub fn next_u32(&mut self) -> u32 {
        if self.index >= N {
            self.regenerate();
        }
        let mut y = self.state[self.index];
        self.index += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }

    fn regenerate(&mut self) {
        const UPPER: u32 = 0x8000_0000;
        const LOWER: u32 = 0x7fff_ffff;
        for i in 0..N {
            let y = (self.state[i] & UPPER) | (self.state[(i + 1) % N] & LOWER);
            let mut next = self.state[(i + M) % N] ^ (y >> 1);
            if y & 1 == 1 {
                next ^= 0x9908_b0df;
            }
            self.state[i] = next;
        }
        self.index = 0;
    }

    /// A uniform integer in `0..=max`: numpy's `rk_interval` (mask, then reject).
    pub fn interval(&mut self, max: u32) -> u32 {
        if max == 0 {
            return 0;
        }
        let mask = u32::MAX >> max.leading_zeros();
        loop {
            let value = self.next_u32() & mask;
            if value <= max {
                return value;
            }
        }
    }

    /// `np.random.shuffle` of a list or 1-D array, in place.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.interval(i as u32) as usize;
            items.swap(i, j);
        }
    }

    /// `np.random.permutation(n)`.
    pub fn permutation(&mut self, n: usize) -> Vec<usize> {
        let mut p: Vec<usize> = (0..n).collect();
        self.shuffle(&mut p);
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_draws_match_numpy() {
        let mut r = RandomState::new(42);
        let draws: Vec<u32> = (0..5).map(|_| r.next_u32()).collect();
        assert_eq!(draws, [1608637542, 3421126067, 4083286876, 787846414, 3143890026]);
        let mut r = RandomState::new(13);
        let draws: Vec<u32> = (0..3).map(|_| r.next_u32()).collect();
        assert_eq!(draws, [3340206418, 2608511152, 1020231754]);
    }

    fn shuffled(seeds: &[u32], n: usize) -> Vec<usize> {
        let mut v: Vec<usize> = (0..n).collect();
        for &s in seeds {
            RandomState::new(s).shuffle(&mut v);
        }
        v
    }

    #[test]
    fn shuffles_match_numpy() {
        assert_eq!(shuffled(&[42], 10), [8, 1, 5, 0, 7, 2, 9, 4, 3, 6]);
        assert_eq!(shuffled(&[13], 10), [3, 5, 6, 1, 4, 7, 8, 9, 0, 2]);
        assert_eq!(shuffled(&[13], 12), [5, 9, 3, 7, 8, 1, 4, 11, 6, 10, 0, 2]);
        assert_eq!(shuffled(&[42], 12), [10, 9, 0, 8, 5, 2, 1, 11, 4, 7, 3, 6]);
        assert_eq!(shuffled(&[100], 12), [9, 6, 1, 5, 4, 2, 0, 10, 7, 3, 11, 8]);
        assert_eq!(shuffled(&[21], 12), [5, 6, 1, 2, 11, 3, 7, 10, 0, 4, 8, 9]);
        assert_eq!(shuffled(&[87], 12), [8, 5, 2, 9, 7, 4, 1, 0, 3, 10, 11, 6]);
        // CoLA's accumulated shuffles: seed 13, then seed 42 on the same list.
        assert_eq!(shuffled(&[13, 42], 12), [0, 10, 5, 6, 1, 3, 9, 2, 8, 11, 7, 4]);
    }

    #[test]
    fn one_k_caps_match_numpy_permutations() {
        let cases: [(usize, [usize; 8]); 5] = [
            (2000, [1860, 353, 1333, 905, 1289, 1273, 938, 1731]),
            (2210, [855, 1546, 1473, 430, 1557, 1411, 810, 408]),
            (9815, [3344, 3852, 5009, 5398, 2335, 647, 7823, 8927]),
            (1043, [1035, 280, 535, 822, 643, 982, 560, 231]),
            (7600, [7094, 1017, 2850, 1452, 457, 6256, 6281, 4999]),
        ];
        for (n, first) in cases {
            assert_eq!(RandomState::new(42).permutation(n)[..8], first, "N={n}");
        }
    }

    #[test]
    fn interval_zero_draws_nothing() {
        let mut a = RandomState::new(7);
        assert_eq!(a.interval(0), 0);
        assert_eq!(a.next_u32(), RandomState::new(7).next_u32());
    }
}
