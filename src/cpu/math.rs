pub trait Real: Copy + Send + Sync + Default + std::fmt::Debug + PartialOrd + 'static {
    fn to_f64(self) -> f64;
}
impl Real for f32 { fn to_f64(self) -> f64 { self as f64 } }
impl Real for f64 { fn to_f64(self) -> f64 { self } }
