//! The usage store, report and dashboard (being written).
