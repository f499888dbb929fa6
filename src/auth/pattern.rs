//! Room patterns, as a token's `rooms` and `moderate` claims give them:
//! an exact room name, or a prefix ending in `*` (`team-*` is every room
//! whose name starts with `team-`).

/// A list of room patterns.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Patterns(Vec<String>);

impl Patterns {
    /// The patterns, as given.
    pub fn new(patterns: Vec<String>) -> Patterns {
        Patterns(patterns)
    }

    /// Whether `room` matches one of them.
    pub fn matches(&self, room: &str) -> bool {
        self.0.iter().any(|pattern| match pattern.strip_suffix('*') {
            Some(prefix) => room.starts_with(prefix),
            None => pattern == room,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_names_and_prefixes() {
        let p = Patterns::new(vec!["lobby".into(), "team-*".into()]);
        assert!(p.matches("lobby") && p.matches("team-a") && p.matches("team-"));
        assert!(!p.matches("lobby2") && !p.matches("team") && !p.matches("teams"));
        assert!(!Patterns::default().matches("lobby"));
        assert!(Patterns::new(vec!["*".into()]).matches("anything"));
    }
}
