//! Spherical-harmonics illumination (eq. 5): the 9 real SH basis functions of 3 bands, evaluated
//! on camera-space unit normals, 9 coefficients per colour channel (27 in all).

/// Real SH normalisation constants (Ramamoorthi & Hanrahan [46]).
pub const C0: f32 = 0.282_094_8; // 1 / (2 sqrt(pi))
pub const C1: f32 = 0.488_602_5; // sqrt(3) / (2 sqrt(pi))
pub const C2: f32 = 1.092_548_4; // sqrt(15) / (2 sqrt(pi))
pub const C3: f32 = 0.315_391_57; // sqrt(5) / (4 sqrt(pi))
pub const C4: f32 = 0.546_274_2; // sqrt(15) / (4 sqrt(pi))

/// Number of SH coefficients per image (3 channels).
pub const NUM_COEFFS: usize = 27;

/// The 9 basis values `H_b(n)` for a unit normal `n = (x, y, z)`.
#[inline]
pub fn basis(n: [f32; 3]) -> [f32; 9] {
    let [x, y, z] = n;
    [C0, C1 * y, C1 * z, C1 * x, C2 * x * y, C2 * y * z, C3 * (3.0 * z * z - 1.0), C2 * x * z, C4 * (x * x - y * y)]
}

/// Gradient of each basis function with respect to `n`: `d[b] = dH_b / dn`.
#[inline]
pub fn basis_grad(n: [f32; 3]) -> [[f32; 3]; 9] {
    let [x, y, z] = n;
    [
        [0.0, 0.0, 0.0],
        [0.0, C1, 0.0],
        [0.0, 0.0, C1],
        [C1, 0.0, 0.0],
        [C2 * y, C2 * x, 0.0],
        [0.0, C2 * z, C2 * y],
        [0.0, 0.0, 6.0 * C3 * z],
        [C2 * z, 0.0, C2 * x],
        [2.0 * C4 * x, -2.0 * C4 * y, 0.0],
    ]
}

/// Per-channel irradiance `sum_b gamma[c*9+b] H_b(n)` for the 27 coefficients `gamma`.
#[inline]
pub fn irradiance(gamma: &[f32], n: [f32; 3]) -> [f32; 3] {
    let h = basis(n);
    let mut e = [0.0f32; 3];
    for c in 0..3 {
        let g = &gamma[c * 9..c * 9 + 9];
        e[c] = g.iter().zip(&h).map(|(a, b)| a * b).sum();
    }
    e
}

/// Shaded colour `r ⊙ irradiance` (eq. 5) of reflectance `r` under `gamma` at normal `n`.
#[inline]
pub fn shade(gamma: &[f32], n: [f32; 3], r: [f32; 3]) -> [f32; 3] {
    let e = irradiance(gamma, n);
    [r[0] * e[0], r[1] * e[1], r[2] * e[2]]
}

/// The neutral illumination: irradiance 1 everywhere, so shaded colour = reflectance.
pub fn neutral() -> [f32; NUM_COEFFS] {
    let mut g = [0.0f32; NUM_COEFFS];
    for c in 0..3 {
        g[c * 9] = 1.0 / C0;
    }
    g
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn neutral_light_returns_reflectance() {
        let g = neutral();
        let c = shade(&g, [0.3, -0.4, (1.0f32 - 0.25).sqrt()], [0.2, 0.5, 0.9]);
        for (a, b) in c.iter().zip([0.2, 0.5, 0.9]) {
            assert!((a - b).abs() < 1e-6);
        }
    }

    #[test]
    fn basis_grad_matches_finite_differences() {
        let n = [0.3f32, -0.5, 0.7];
        let g = basis_grad(n);
        let eps = 1e-3;
        for k in 0..3 {
            let mut p = n;
            let mut m = n;
            p[k] += eps;
            m[k] -= eps;
            let (hp, hm) = (basis(p), basis(m));
            for b in 0..9 {
                let fd = (hp[b] - hm[b]) / (2.0 * eps);
                assert!((fd - g[b][k]).abs() < 1e-3, "band {b} axis {k}: {fd} vs {}", g[b][k]);
            }
        }
    }
}
