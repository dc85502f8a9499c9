//! Readable differences between expected and actual values, for test failures.

use std::fmt::Debug;

use similar::{ChangeTag, TextDiff};

/// A line diff of the pretty `Debug` renderings: `-` expected, `+` actual.
pub fn debug_diff<T: Debug + ?Sized>(expected: &T, actual: &T) -> String {
    let expected = format!("{expected:#?}");
    let actual = format!("{actual:#?}");
    let mut out = String::from("(- expected, + actual)\n");
    for change in TextDiff::from_lines(&expected, &actual).iter_all_changes() {
        let sign = match change.tag() {
            ChangeTag::Delete => '-',
            ChangeTag::Insert => '+',
            ChangeTag::Equal => ' ',
        };
        out.push(sign);
        out.push(' ');
        out.push_str(change.as_str().unwrap_or_default().trim_end_matches('\n'));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_changed_lines() {
        #[derive(Debug)]
        #[allow(dead_code)]
        struct S {
            a: u32,
            b: &'static str,
        }
        let d = debug_diff(&S { a: 1, b: "x" }, &S { a: 2, b: "x" });
        assert!(d.contains("-     a: 1,"), "{d}");
        assert!(d.contains("+     a: 2,"), "{d}");
        assert!(d.contains("      b: \"x\","), "{d}");
    }
}
