//! Tests of the loss terms against hand-computed values.

use super::regularizers::{self, Edges, SkinPairs};
use super::sparse::SparseLandmarks;
use crate::face_model::FaceModel;
use crate::render::camera::{Intrinsics, euler_to_matrix, transform};
use candle_core::{DType, Device, Tensor};
use std::collections::BTreeMap;

/// A unit square split into two triangles: vertices 0 (0,0), 1 (1,0), 2 (1,1), 3 (0,1).
fn square() -> FaceModel {
    FaceModel {
        mean_shape: vec![0., 0., 0., 1., 0., 0., 1., 1., 0., 0., 1., 0.],
        shape_basis: vec![],
        shape_std: vec![],
        expr_basis: vec![],
        expr_std: vec![],
        mean_albedo: vec![0.5; 12],
        albedo_basis: vec![],
        albedo_std: vec![],
        triangles: vec![[0, 1, 2], [0, 2, 3]],
        landmarks: vec![0; 68],
        contour_right: vec![0],
        contour_left: vec![1],
        skin_mask: vec![0, 1],
        face_region: vec![0, 1, 2, 3],
        metadata: BTreeMap::new(),
    }
}

fn t3(v: &[f32], n: usize) -> Tensor {
    Tensor::from_slice(v, (1, n, 3), &Device::Cpu).unwrap()
}

fn scalar(t: &Tensor) -> f32 {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()[0]
}

#[test]
fn smoothness_and_stabilisation_match_hand_computation() {
    let m = square();
    let e = Edges::new(&m, &Device::Cpu).unwrap();
    // 1-rings: 0 {1,2,3}, 1 {0,2}, 2 {0,1,3}, 3 {0,2}. Offset: vertex 2 moved by (0,0,3).
    let f = t3(&[0., 0., 0., 0., 0., 0., 0., 0., 3., 0., 0., 0.], 4);
    // Eq. 12: (1/4) [ (1/3)*9 (from 0) + (1/2)*9 (from 1) + (1/3)*(9+9+9) (from 2) + (1/2)*9 (from 3) ]
    let expect = (3.0 + 4.5 + 9.0 + 4.5) / 4.0;
    assert!((scalar(&regularizers::smoothness(&f, &e).unwrap()) - expect).abs() < 1e-5);
    // Eq. 15: (1/4) * 9.
    assert!((scalar(&regularizers::stabilisation(&f).unwrap()) - 2.25).abs() < 1e-6);
}

#[test]
fn reflectance_terms_match_hand_computation() {
    let m = square();
    let dev = Device::Cpu;
    let e = Edges::new(&m, &dev).unwrap();
    // Reflectance differs only at vertex 1 (by 0.3 in red).
    let r = t3(&[0.5, 0.5, 0.5, 0.8, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5], 4);
    // Image colours: identical chromaticity everywhere except at vertex 3, all visible.
    let s = t3(&[0.2, 0.2, 0.2, 0.4, 0.4, 0.4, 0.3, 0.3, 0.3, 0.6, 0.2, 0.2], 4);
    let vis = Tensor::ones((1, 4), DType::F32, &dev).unwrap();
    let w = regularizers::chroma_weights(&s, &vis, &e, 50.0).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    // Edge order: 0->1, 0->2, 0->3, 1->0, 1->2, 2->0, 2->1, 2->3, 3->0, 3->2.
    assert!((w[0] - 1.0).abs() < 1e-3, "same chromaticity, weight 1");
    assert!(w[2] < 1e-3, "different chromaticity, weight ~0: {}", w[2]);
    let ws = Tensor::from_slice(&w, (1, 10), &dev).unwrap();
    // Eq. 13 with p = 1: (1/4) * sum over edges touching vertex 1 (0->1, 1->0, 1->2, 2->1) of 0.3.
    let got = scalar(&regularizers::reflectance_sparsity(&r, &ws, &e, 1.0).unwrap());
    let expect = (w[0] + w[3] + w[4] + w[6]) * 0.3 / 4.0;
    assert!((got - expect).abs() < 1e-4, "{got} vs {expect}");
    // Eq. 14 over the skin mask {0, 1} with 3 partners each: every pair differs by 0.3 or 0.
    let pairs = SkinPairs::new(&m, 3, 1, &dev).unwrap();
    let glo = scalar(&regularizers::global_reflectance(&r, &pairs).unwrap());
    let a = pairs.a.to_vec1::<u32>().unwrap();
    let b = pairs.b.to_vec1::<u32>().unwrap();
    let unequal = a.iter().zip(&b).filter(|(x, y)| x != y).count() as f32;
    assert!((glo - unequal * 0.09 / 2.0).abs() < 1e-5);
    assert!(unequal > 0.0, "partners must not all be the vertex itself");
}

#[test]
fn statistical_prior_is_a_sum_of_squared_z_scores() {
    let dev = Device::Cpu;
    let zs = Tensor::new(&[[1.0f32, 2.0]], &dev).unwrap();
    let ze = Tensor::new(&[[3.0f32]], &dev).unwrap();
    let za = Tensor::new(&[[0.5f32, 0.5]], &dev).unwrap();
    let (g, a) = regularizers::statistical(&zs, &ze, &za).unwrap();
    assert_eq!((scalar(&g), scalar(&a)), (14.0, 0.5));
}

#[test]
fn sliding_points_pick_the_contour_vertex_on_the_detected_ray() {
    let dev = Device::Cpu;
    let m = crate::face_model::demo::demo_model();
    let k = Intrinsics { focal: 800.0, width: 240, height: 240, near: 1.0 };
    let r = euler_to_matrix([0.05, 0.4, 0.0]); // turned 23 degrees
    let t = [0.0, 0.0, -900.0];
    let cam: Vec<f32> = crate::face_model::to_vec3(&m.mean_shape).iter().flat_map(|v| transform(&r, t, *v)).collect();
    let n = m.num_vertices();
    let camera = Tensor::from_vec(cam.clone(), (1, n, 3), &dev).unwrap();
    // Targets: sliding points at the projections of chosen candidates, others at their vertex.
    let chosen_r = m.contour_right[m.contour_right.len() / 3];
    let chosen_l = m.contour_left[m.contour_left.len() / 2];
    let mut targets = vec![0f32; 68 * 2];
    for i in 0..68 {
        let v = if (0..8).contains(&i) {
            chosen_r
        } else if (9..17).contains(&i) {
            chosen_l
        } else {
            m.landmarks[i]
        };
        let p = k.project([cam[v as usize * 3], cam[v as usize * 3 + 1], cam[v as usize * 3 + 2]]).unwrap();
        targets[i * 2] = p[0];
        targets[i * 2 + 1] = p[1];
    }
    let targets = Tensor::from_vec(targets, (1, 68, 2), &dev).unwrap();
    let sparse = SparseLandmarks::new(&m, true, &dev).unwrap();
    let idx = sparse.vertex_indices(&camera, &targets, &k).unwrap().to_vec2::<u32>().unwrap();
    assert!(idx[0][..8].iter().all(|&v| v == chosen_r), "{:?}", &idx[0][..8]);
    assert!(idx[0][9..17].iter().all(|&v| v == chosen_l), "{:?}", &idx[0][9..17]);
    assert_eq!(idx[0][8], m.landmarks[8]);
    assert_eq!(&idx[0][17..], &m.landmarks[17..]);
    // The loss is then zero; with fixed points only it is not.
    let conf = Tensor::ones((1, 68), DType::F32, &dev).unwrap();
    let (l, px) = sparse.loss(&camera, &targets, &conf, &k).unwrap();
    assert!(scalar(&l) < 1e-6 && scalar(&px) < 1e-3);
    let fixed = SparseLandmarks::new(&m, false, &dev).unwrap();
    assert!(scalar(&fixed.loss(&camera, &targets, &conf, &k).unwrap().0) > 1.0);
    // Missing points (confidence 0) do not count.
    let mut c = vec![1f32; 68];
    c[60] = 0.0;
    let shifted = (targets.clone() + 10.0).unwrap().narrow(1, 60, 1).unwrap();
    let t2 = Tensor::cat(&[targets.narrow(1, 0, 60).unwrap(), shifted, targets.narrow(1, 61, 7).unwrap()], 1).unwrap();
    let (l2, _) = sparse.loss(&camera, &t2, &Tensor::from_vec(c, (1, 68), &dev).unwrap(), &k).unwrap();
    assert!(scalar(&l2) < 1e-6);
}
