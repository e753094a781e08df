//! Tables for the parsers.
