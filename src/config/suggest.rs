//! "Did you mean …?": the closest known word to a misspelt one, by edit distance. Small and
//! own (no crate): the candidate lists are a section's keys, an enum's words or the time-zone
//! names, a few hundred short strings at most, and it only runs when a config is wrong.

/// Edit distance counting an insertion, a deletion, a substitution or a swap of two
/// neighbours as one (optimal string alignment): "sycn" is one slip from "sync", as a person
/// sees it. Over chars and case-insensitive: `Concurrency` and `concurrency` are one word.
pub(crate) fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().flat_map(char::to_lowercase).collect();
    let b: Vec<char> = b.chars().flat_map(char::to_lowercase).collect();
    // The full table: the words are short (keys, zone names), so its size never matters.
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

/// The candidate closest to `word`, when it is close enough to be a typo of it: at most a
/// third of the word's length apart (at least 1, so a one-letter slip always counts; at most
/// 3, so a long unrelated word never "matches"). Ties go to the first candidate.
pub(crate) fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let limit = (word.chars().count() / 3).clamp(1, 3);
    candidates
        .into_iter()
        .map(|c| (edit_distance(word, c), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distances() {
        assert_eq!(edit_distance("", ""), 0);
        assert_eq!(edit_distance("abc", ""), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("concurrncy", "concurrency"), 1);
        assert_eq!(edit_distance("Europe/Berln", "europe/berlin"), 1);
        assert_eq!(edit_distance("sycn", "sync"), 1);
    }

    #[test]
    fn suggestions_only_for_near_misses() {
        let keys = ["conflict", "concurrency", "max_attempts", "retry_min"];
        assert_eq!(did_you_mean("concurrncy", keys), Some("concurrency"));
        assert_eq!(did_you_mean("max_atempts", keys), Some("max_attempts"));
        assert_eq!(did_you_mean("sycn", ["sync", "state", "log"]), Some("sync"));
        assert_eq!(did_you_mean("colour", keys), None);
        assert_eq!(did_you_mean("x", keys), None);
    }

    /// Generated inputs (proptest is not a dependency; `fastrand`, seeded, is, as in
    /// tests/it/hostile.rs): never a panic, and the distance is symmetric.
    #[test]
    fn generated_words_never_panic_and_distance_is_symmetric() {
        let mut rng = fastrand::Rng::with_seed(0x5eed_0021);
        for _ in 0..2000 {
            let a = crate::config::hostile_text(&mut rng, 20);
            let b = crate::config::hostile_text(&mut rng, 20);
            assert_eq!(edit_distance(&a, &b), edit_distance(&b, &a), "{a:?} {b:?}");
            let _ = did_you_mean(&a, [b.as_str()]);
        }
    }
}
