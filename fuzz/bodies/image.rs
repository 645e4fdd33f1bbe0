//! An image file of any bytes, decoded with `predict`'s limits, then resized, cropped and
//! normalised as the eval transform does.

use sknet::infer::{load_image, Preprocess};

pub fn run(data: &[u8]) {
    let path = super::scratch_file::write("image", "img", data);
    let decoded = load_image(&path);
    let _ = std::fs::remove_file(&path);
    let Ok(image) = decoded else {
        return;
    };
    assert_eq!(image.data.len(), image.width * image.height * 3);
    let preprocess = Preprocess::imagenet([32, 32]);
    let cropped = preprocess.resize_crop(&image);
    assert_eq!((cropped.width, cropped.height), (32, 32));
    let input = preprocess.normalize(&cropped);
    assert_eq!(input.len(), 3 * 32 * 32);
    assert!(input.iter().all(|v| v.is_finite()));
}
