//! CNI plugin logic.
