//! The demo shop's product page: an HTML page with the sub-resources a real page has
//! (a stylesheet that pulls in a web font and a background image, a script, product
//! images, an icon) and one reference to a missing image, so that a page load has
//! something to list as failed.
//!
//! Everything is generated here, deterministically, at sizes that keep a page load on
//! the demo's dial-up line within a few seconds. [`TargetSite`](crate::site::TargetSite)
//! serves it under [`PAGE_PATH`].

/// Where the page is served.
pub const PAGE_PATH: &str = "/page/";

/// Product images on the page.
pub const PRODUCT_IMAGES: usize = 10;

/// The one reference that answers 404.
pub const MISSING_PATH: &str = "/page/img/missing.png";

/// One thing the site serves for the page.
#[derive(Debug, Clone)]
pub struct Resource {
    pub path: String,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

/// The page's HTML.
pub fn html() -> String {
    let mut images = String::new();
    for i in 1..=PRODUCT_IMAGES {
        images.push_str(&format!(
            "<li><img src=\"img/product-{i}.png\" alt=\"Product {i}\"> Product {i}</li>\n"
        ));
    }
    format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>Lastmile demo shop: products</title>\n\
         <link rel=\"stylesheet\" href=\"style.css\">\n\
         <link rel=\"icon\" href=\"/page/favicon.ico\">\n\
         <script src=\"app.js\" defer></script>\n\
         </head><body><h1>Products</h1>\n<ul>\n{images}</ul>\n\
         <p><img src=\"{MISSING_PATH}\" alt=\"Sold out\"></p>\n\
         </body></html>\n"
    )
}

/// The stylesheet: a font and a background image by `url()`, relative to itself.
pub fn stylesheet() -> String {
    "@font-face { font-family: Shop; src: url(\"fonts/shop.woff2\") format(\"woff2\"); }\n\
     body { font-family: Shop, sans-serif; background: #fafafa url(img/bg.png) repeat-x; }\n\
     li { list-style: none; display: inline-block; width: 12em; }\n"
        .to_owned()
}

/// A download as a video segment or a software update is: `DOWNLOAD_BYTES` that do not
/// compress, large enough for a goodput (64 KiB and more), and long enough on the line
/// (84 ms at 100 Mbit/s) that a relay stalled for some milliseconds by a loaded machine
/// does not make it look faster than the line.
pub const DOWNLOAD_PATH: &str = "/download/segment.bin";
pub const DOWNLOAD_BYTES: usize = 1024 * 1024;

/// The body served at [`DOWNLOAD_PATH`].
pub fn download() -> Resource {
    Resource {
        path: DOWNLOAD_PATH.into(),
        content_type: "application/octet-stream",
        body: noise(99, DOWNLOAD_BYTES),
    }
}

/// `n` bytes that do not compress to nothing (images and fonts are already compressed).
pub(crate) fn noise(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Everything the page references that exists (the missing image is not here).
pub fn resources() -> Vec<Resource> {
    let mut out = vec![
        Resource {
            path: "/page/style.css".into(),
            content_type: "text/css",
            body: stylesheet().into_bytes(),
        },
        Resource {
            path: "/page/favicon.ico".into(),
            content_type: "image/x-icon",
            body: noise(1, 1_150),
        },
        Resource {
            path: "/page/app.js".into(),
            content_type: "text/javascript",
            body: format!(
                "// demo shop\n{}",
                "window.shop = window.shop || {};\n".repeat(80)
            )
            .into_bytes(),
        },
        Resource {
            path: "/page/fonts/shop.woff2".into(),
            content_type: "font/woff2",
            body: noise(2, 4_000),
        },
        Resource {
            path: "/page/img/bg.png".into(),
            content_type: "image/png",
            body: noise(3, 1_500),
        },
    ];
    for i in 1..=PRODUCT_IMAGES {
        out.push(Resource {
            path: format!("/page/img/product-{i}.png"),
            content_type: "image/png",
            body: noise(10 + i as u64, 1_400 + 20 * i),
        });
    }
    out
}

/// What a page load of the shop page must find: `(sub-resources requested, bytes of
/// the page including its HTML, the failed path)`. The missing image's 404 body is
/// counted too: a browser downloads it.
pub fn expected(not_found_body: usize) -> (u32, u64, &'static str) {
    let found = resources();
    let bytes: usize =
        html().len() + found.iter().map(|r| r.body.len()).sum::<usize>() + not_found_body;
    (found.len() as u32 + 1, bytes as u64, MISSING_PATH)
}
