//! 9. Byte ranges from a cached full object.

use crate::common::*;

async fn setup() -> (Origin, Edge) {
    let o = Origin::start().await;
    o.always(
        "/r",
        Reply::ok("0123456789abcdefghij")
            .header("cache-control", "max-age=60")
            .header("etag", "\"r1\"")
            .header("content-type", "text/plain")
            .header("last-modified", "Wed, 21 Oct 2015 07:28:00 GMT"),
    );
    let e = Edge::for_origin(&o).await;
    (o, e)
}

#[tokio::test]
async fn single_range() {
    let (o, edge) = setup().await;
    // A cold range request fills the cache with the whole object.
    let r = edge.get_with("/r", &[("range", "bytes=2-5")]).await;
    assert_eq!(r.status, 206);
    assert_eq!(r.text(), "2345");
    assert_eq!(r.header("content-range"), "bytes 2-5/20");
    assert!(o.last("/r").headers.get("range").is_none());
    let r = edge.get_with("/r", &[("range", "bytes=-3")]).await;
    assert_eq!(r.text(), "hij");
    assert!(r.is_hit());
    let r = edge.get_with("/r", &[("range", "bytes=15-")]).await;
    assert_eq!(r.text(), "fghij");
    assert_eq!(r.header("content-length"), "5");
    assert_eq!(o.count("/r"), 1);
}

#[tokio::test]
async fn multiple_ranges_are_multipart() {
    let (_o, edge) = setup().await;
    edge.get("/r").await;
    let r = edge.get_with("/r", &[("range", "bytes=0-1,10-12")]).await;
    assert_eq!(r.status, 206);
    let ct = r.header("content-type").to_string();
    let boundary = ct
        .strip_prefix("multipart/byteranges; boundary=")
        .expect("multipart content type");
    let body = r.text();
    assert!(
        body.contains(&format!(
            "--{boundary}\r\nContent-Type: text/plain\r\nContent-Range: bytes 0-1/20\r\n\r\n01\r\n"
        )),
        "{body}"
    );
    assert!(
        body.contains("Content-Range: bytes 10-12/20\r\n\r\nabc\r\n"),
        "{body}"
    );
    assert!(body.ends_with(&format!("--{boundary}--\r\n")));
}

#[tokio::test]
async fn unsatisfiable_is_416() {
    let (_o, edge) = setup().await;
    edge.get("/r").await;
    let r = edge.get_with("/r", &[("range", "bytes=50-60")]).await;
    assert_eq!(r.status, 416);
    assert_eq!(r.header("content-range"), "bytes */20");
}

#[tokio::test]
async fn if_range_decides() {
    let (_o, edge) = setup().await;
    edge.get("/r").await;
    let r = edge
        .get_with("/r", &[("range", "bytes=0-1"), ("if-range", "\"r1\"")])
        .await;
    assert_eq!(r.status, 206);
    let r = edge
        .get_with("/r", &[("range", "bytes=0-1"), ("if-range", "\"old\"")])
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), 20);
    let r = edge
        .get_with(
            "/r",
            &[
                ("range", "bytes=0-1"),
                ("if-range", "Wed, 21 Oct 2015 07:28:00 GMT"),
            ],
        )
        .await;
    assert_eq!(r.status, 206);
    let r = edge
        .get_with("/r", &[("range", "bytes=0-1"), ("if-range", "W/\"r1\"")])
        .await;
    assert_eq!(r.status, 200, "weak validators never satisfy If-Range");
}
