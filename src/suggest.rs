//! The closest existing tags to one that does not exist: a typo in a tag is
//! the first cause every pull-failure guide lists. Used by the cache for a
//! pull's hint and by `berth doctor` for its image step.

/// How many existing tags a hint names at most.
const SUGGESTIONS: usize = 3;

/// Up to `SUGGESTIONS` tags near `wanted`: by edit distance, a shared prefix
/// breaking ties, and only those close enough to be a slip (at most a third
/// of the longer tag, and at least 1, 2 for tags of 3+ characters).
pub fn closest(wanted: &str, tags: &[String]) -> Vec<String> {
    let mut near: Vec<(usize, usize, &String)> = tags
        .iter()
        .filter(|t| t.as_str() != wanted)
        .filter_map(|t| {
            let distance = strsim::levenshtein(wanted, t);
            let longer = wanted.chars().count().max(t.chars().count());
            let allowed = (longer / 3).max(if longer >= 3 { 2 } else { 1 });
            let prefix = wanted.chars().zip(t.chars()).take_while(|(a, b)| a == b).count();
            (distance <= allowed).then_some((distance, usize::MAX - prefix, t))
        })
        .collect();
    near.sort();
    near.into_iter().take(SUGGESTIONS).map(|(_, _, t)| t.clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::closest;

    fn tags(list: &[&str]) -> Vec<String> {
        list.iter().map(|t| t.to_string()).collect()
    }

    #[test]
    fn a_slip_finds_the_tags_it_was_meant_to_be() {
        let all = tags(&["1.35", "1.36", "1.36.1", "latest", "musl", "stable", "1.37-uclibc"]);
        assert_eq!(closest("1.3", &all), ["1.35", "1.36"]);
        assert_eq!(closest("lastest", &all), ["latest"]);
        assert_eq!(closest("1.36.2", &all), ["1.36.1", "1.36"]);
        assert_eq!(closest("stabel", &all), ["stable"]);
    }

    #[test]
    fn nothing_close_suggests_nothing() {
        let all = tags(&["1.35", "latest"]);
        assert!(closest("bookworm-slim", &all).is_empty());
        assert!(closest("x", &tags(&["latest"])).is_empty());
        assert!(closest("v1", &[]).is_empty());
    }
}
