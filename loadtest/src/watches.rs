use anyhow::Result;
use clap::Args;

use crate::report::Report;
use crate::Common;

#[derive(Debug, Clone, Args)]
pub struct Options {
    #[command(flatten)]
    pub common: Common,
}

pub fn run(_options: Options) -> Result<Report> {
    anyhow::bail!("not built yet")
}
