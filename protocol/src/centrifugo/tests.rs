use super::schema::*;
use super::*;
use crate::record::{Payload, render};

fn json_record(id: &str, event: Option<&str>, data: &str) -> Vec<u8> {
    let raw = RawValue::from_string(data.to_owned()).unwrap();
    render(
        "news",
        id,
        event,
        &Payload::Json(Cow::Owned(raw)),
        1_700_000_000_000,
    )
}

#[test]
fn json_commands_are_read_one_per_line() {
    let text = br#"{"id":1,"connect":{"token":"t","name":"js"}}
{"id":2,"subscribe":{"channel":"news","recover":true,"offset":"7","epoch":"0000abcd","flag":1}}
{}"#;
    let commands = decode_commands(Wire::Json, text).unwrap();
    assert_eq!(commands.len(), 3);
    assert_eq!(commands[0].connect.as_ref().unwrap().token, "t");
    let sub = commands[1].subscribe.as_ref().unwrap();
    assert_eq!(
        (sub.recover, sub.offset, &*sub.epoch),
        (true, 7, "0000abcd")
    );
    assert_eq!(commands[2], Command::default(), "an empty object is a pong");
    assert_eq!(decode_commands(Wire::Json, b"{\"id\":1,"), Err(Malformed));
    assert_eq!(decode_commands(Wire::Json, b"[1]"), Err(Malformed));
    assert_eq!(decode_commands(Wire::Json, &[0xff]), Err(Malformed));
}

#[test]
fn json_publish_data_is_raw_json() {
    let c = &decode_commands(
        Wire::Json,
        br#"{"id":3,"publish":{"channel":"a","data":{"x": [1, 2]}}}"#,
    )
    .unwrap()[0];
    assert_eq!(c.publish.as_ref().unwrap().data, br#"{"x": [1, 2]}"#);
}

#[test]
fn protobuf_commands_are_length_delimited() {
    let connect = Command {
        id: 1,
        connect: Some(ConnectRequest {
            token: "t".into(),
            ..ConnectRequest::default()
        }),
        ..Command::default()
    };
    let pong = Command::default();
    let mut frame = connect.encode_length_delimited_to_vec();
    frame.extend(pong.encode_length_delimited_to_vec());
    let commands = decode_commands(Wire::Protobuf, &frame).unwrap();
    assert_eq!(commands, vec![connect, pong]);
    // A length past the end, and bytes that are no message.
    assert_eq!(decode_commands(Wire::Protobuf, &[5, 8]), Err(Malformed));
    assert_eq!(
        decode_commands(Wire::Protobuf, &[2, 0xff, 0xff]),
        Err(Malformed)
    );
}

#[test]
fn results_are_written_even_when_empty() {
    let reply = Reply {
        id: 4,
        subscribe: Some(SubscribeResult::default()),
        ..Reply::default()
    };
    assert_eq!(encode(Wire::Json, &reply), br#"{"id":4,"subscribe":{}}"#);
    assert_eq!(ping(Wire::Json), b"{}");
    assert_eq!(ping(Wire::Protobuf), [0], "an empty message, length 0");
}

#[test]
fn an_event_becomes_a_publication_push() {
    let record = json_record("0000abcd-42", Some("tick"), r#"{"p":1}"#);
    let json = push(&record, Wire::Json).unwrap();
    assert_eq!(
        std::str::from_utf8(&json).unwrap(),
        r#"{"push":{"channel":"news","pub":{"data":{"p":1},"offset":42,"tags":{"event":"tick"}}}}"#
    );
    let proto = push(&record, Wire::Protobuf).unwrap();
    let mut slice = &proto[..];
    let reply = Reply::decode_length_delimited(&mut slice).unwrap();
    let p = reply.push.unwrap();
    assert_eq!(p.channel, "news");
    let publication = p.publication.unwrap();
    assert_eq!(
        (publication.data.as_slice(), publication.offset),
        (&br#"{"p":1}"#[..], 42)
    );
}

#[test]
fn byte_payloads_are_bytes_or_tagged_base64() {
    let record = render(
        "bin",
        "0000abcd-1",
        None,
        &Payload::Bytes(Cow::Borrowed(&[0, 1, 2, 255])),
        1,
    );
    let proto = publication(&record, Wire::Protobuf).unwrap();
    assert_eq!(proto.data, [0, 1, 2, 255]);
    assert!(proto.tags.is_empty());
    let json = publication(&record, Wire::Json).unwrap();
    assert_eq!(json.data, br#""AAEC/w==""#);
    assert_eq!(json.tags[DATA_ENCODING_TAG], "base64");
    let pushed = push(&record, Wire::Json).unwrap();
    assert!(
        std::str::from_utf8(&pushed)
            .unwrap()
            .contains(r#""channel":"bin""#)
    );
}

#[test]
fn presence_frames_become_join_and_leave() {
    let frame = br#"{"type":"join","topic":"room","sub":"ann","session":"s1","info":{"n":1}}"#;
    assert_eq!(
        std::str::from_utf8(&push(frame, Wire::Json).unwrap()).unwrap(),
        r#"{"push":{"channel":"room","join":{"info":{"user":"ann","client":"s1","conn_info":{"n":1}}}}}"#
    );
    let frame = br#"{"type":"leave","topic":"room","sub":"ann","session":"s1"}"#;
    let out = push(frame, Wire::Json).unwrap();
    assert!(
        std::str::from_utf8(&out)
            .unwrap()
            .contains(r#""leave":{"info":{"user":"ann","client":"s1"}}"#)
    );
    assert_eq!(push(br#"{"type":"pong"}"#, Wire::Json), None);
}

#[test]
fn positions_map_one_to_one() {
    assert_eq!(position("0000abcd-0"), Some(("0000abcd", 0)));
    assert_eq!(position("0000abcd-17"), Some(("0000abcd", 17)));
    assert_eq!(since("0000abcd", 17), "0000abcd-17");
    assert_eq!(position("nonsense"), None);
}

#[test]
fn every_close_code_keeps_its_advice() {
    for code in CloseCode::ALL {
        let (c, _) = disconnect(code);
        let reconnect = (3000..3500).contains(&c);
        let herald_reconnects = matches!(
            code,
            CloseCode::Normal
                | CloseCode::Restart
                | CloseCode::InternalError
                | CloseCode::TokenExpired
                | CloseCode::SlowConsumer
                | CloseCode::HeartbeatTimeout
                | CloseCode::PolicyViolation
        );
        assert_eq!(reconnect, herald_reconnects, "{code:?} → {c}");
    }
}

#[test]
fn the_js_sdk_connect_command_is_read() {
    let text = br#"{"connect":{"token":"abc","name":"js"},"id":1}"#;
    let r = serde_json::from_slice::<Command>(text);
    assert!(r.is_ok(), "{r:?}");
}
