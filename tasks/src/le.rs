//! Little-endian numeric columns: the byte order every artifact documents, whatever the host's.

/// A number stored in a column; `swap` reverses its bytes (used on big-endian hosts only).
pub trait Column: bytemuck::Pod {
    fn swap(self) -> Self;
}

impl Column for u32 {
    fn swap(self) -> Self {
        self.swap_bytes()
    }
}

impl Column for i32 {
    fn swap(self) -> Self {
        self.swap_bytes()
    }
}

impl Column for u64 {
    fn swap(self) -> Self {
        self.swap_bytes()
    }
}

impl Column for f32 {
    fn swap(self) -> Self {
        f32::from_bits(self.to_bits().swap_bytes())
    }
}

/// Appends `xs` to `out`, little-endian.
pub fn extend<T: Column>(out: &mut Vec<u8>, xs: &[T]) {
    if cfg!(target_endian = "little") {
        out.extend_from_slice(bytemuck::cast_slice(xs));
    } else {
        for &x in xs {
            out.extend_from_slice(bytemuck::bytes_of(&x.swap()));
        }
    }
}

/// Reads a little-endian column (`bytes.len()` must be a multiple of the element size).
pub fn collect<T: Column>(bytes: &[u8]) -> Vec<T> {
    let mut v: Vec<T> = bytemuck::pod_collect_to_vec(bytes);
    if cfg!(target_endian = "big") {
        for x in &mut v {
            *x = x.swap();
        }
    }
    v
}

#[cfg(test)]
mod tests {
    #[test]
    fn columns_are_little_endian_bytes() {
        let mut out = Vec::new();
        super::extend(&mut out, &[1u32, 0x0102_0304]);
        assert_eq!(out, [1, 0, 0, 0, 4, 3, 2, 1]);
        super::extend(&mut out, &[1.0f32]);
        assert_eq!(&out[8..], 1.0f32.to_bits().to_le_bytes());
        assert_eq!(super::collect::<u32>(&out[..8]), vec![1, 0x0102_0304]);
    }
}
