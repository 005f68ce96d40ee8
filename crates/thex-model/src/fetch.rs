//! Obtaining and verifying model directories (work in progress).
