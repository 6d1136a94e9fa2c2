//! The README renders as written: a stray code fence once swallowed everything from
//! "this week against last week" down to and including "For ISPs" into one code block.

/// Every code fence the README opens is closed, and no section heading sits inside a
/// code block (where it would show as code instead of starting its section).
#[test]
fn the_readmes_code_fences_balance_and_no_heading_is_inside_one() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let mut open_at: Option<usize> = None;
    let mut headings = 0;
    for (i, line) in readme.lines().enumerate() {
        let n = i + 1;
        if line.trim_start().starts_with("```") {
            open_at = match open_at {
                Some(_) => None,
                None => Some(n),
            };
            continue;
        }
        // "# " inside a code block is a shell comment; "## " never is.
        if line.starts_with("## ") || (line.starts_with("# ") && open_at.is_none()) {
            assert!(
                open_at.is_none(),
                "README line {n}, {line:?}, is inside the code block opened at line {}",
                open_at.unwrap_or_default()
            );
            headings += 1;
        }
    }
    assert_eq!(
        open_at, None,
        "README: the code fence opened at this line is never closed"
    );
    assert!(headings >= 3, "README: only {headings} headings found");
}
