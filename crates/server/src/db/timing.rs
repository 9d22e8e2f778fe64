//! How long each statement takes, read from the database driver's own per-statement events
//! (sqlx's `sqlx::query` target, with `elapsed_secs`) by a log-subscriber layer, rather than by
//! wrapping every store call. What is done with a timing is the caller's (`ops`: a histogram).

/// The driver's per-statement event target.
const TARGET: &str = "sqlx::query";

struct Timing(fn(f64));

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Timing {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        struct Elapsed(Option<f64>);
        impl tracing::field::Visit for Elapsed {
            fn record_f64(&mut self, f: &tracing::field::Field, v: f64) {
                if f.name() == "elapsed_secs" {
                    self.0 = Some(v);
                }
            }
            fn record_debug(&mut self, _: &tracing::field::Field, _: &dyn std::fmt::Debug) {}
        }
        if event.metadata().target() != TARGET {
            return;
        }
        let mut e = Elapsed(None);
        event.record(&mut e);
        if let Some(secs) = e.0 {
            (self.0)(secs);
        }
    }
}

/// A layer calling `observe` with each statement's seconds. Its filter enables the driver's
/// events at DEBUG: the driver times a statement only when its event is enabled.
pub fn layer<S>(observe: fn(f64)) -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    use tracing_subscriber::Layer;
    Timing(observe).with_filter(
        tracing_subscriber::filter::Targets::new().with_target(TARGET, tracing::Level::DEBUG),
    )
}
