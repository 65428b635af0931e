//! Placeholder (issue 3).
