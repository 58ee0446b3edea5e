//! drove-exec's integration tests.

mod fuzz;
