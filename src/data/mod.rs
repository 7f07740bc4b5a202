//! Few-shot task data: the LM-BFF task registry, the byte-identical k-shot split generator and
//! the readers and random-number generator it depends on.

pub mod batch;
pub mod csv;
pub mod dataset;
pub mod demo;
pub mod examples;
pub mod kshot;
pub mod mt19937;
pub mod tasks;
pub mod template;
pub mod tsv;
