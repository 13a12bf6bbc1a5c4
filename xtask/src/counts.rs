//! Test counts: what libtest and the privileged harness print at the end of a run, read back and
//! added up.

#[derive(Default, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub passed: u64,
    pub failed: u64,
    pub skipped: u64,
}

impl Counts {
    pub fn add(&mut self, other: Counts) {
        self.passed += other.passed;
        self.failed += other.failed;
        self.skipped += other.skipped;
    }
}

pub fn parse_summary(line: &str) -> Option<Counts> {
    let body = if let Some(rest) = line.strip_prefix("test result: ") {
        rest.split_once(". ")?.1
    } else {
        line.strip_prefix("privileged: ")?
    };
    let mut counts = Counts::default();
    for part in body.split([';', ',']) {
        let mut words = part.split_whitespace();
        let (Some(n), Some(what)) = (words.next(), words.next()) else {
            continue;
        };
        let Ok(n) = n.parse::<u64>() else { continue };
        match what {
            "passed" => counts.passed = n,
            "failed" => counts.failed = n,
            "ignored" | "skipped" => counts.skipped = n,
            _ => {}
        }
    }
    Some(counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_libtest_and_harness_summaries() {
        assert_eq!(
            parse_summary("test result: ok. 3 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.00s"),
            Some(Counts { passed: 3, failed: 0, skipped: 1 })
        );
        assert_eq!(
            parse_summary("test result: FAILED. 1 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out"),
            Some(Counts { passed: 1, failed: 2, skipped: 0 })
        );
        assert_eq!(
            parse_summary("privileged: 2 passed, 0 failed, 1 skipped"),
            Some(Counts { passed: 2, failed: 0, skipped: 1 })
        );
        assert_eq!(parse_summary("test foo ... ok"), None);
    }
}
