package control

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/roomcast/roomcast/fabric"
	pb "github.com/roomcast/roomcast/gen/roomcast/v1"
	"github.com/roomcast/roomcast/internal/pbconv"
)

// payloadIn converts a request payload to the fabric form. A json Value becomes
// compact JSON text; json_text is validated and kept byte for byte (the cheap path for
// publishers that already hold encoded JSON); binary is kept as is.
func payloadIn(p *pb.Payload) (fabric.Payload, error) {
	if p == nil || p.GetKind() == nil {
		return fabric.Payload{}, badRequest("payload is missing")
	}
	switch k := p.GetKind().(type) {
	case *pb.Payload_Json:
		if k.Json == nil || k.Json.GetKind() == nil {
			return fabric.Payload{}, badRequest("payload json value is empty")
		}
		raw, err := protojson.Marshal(k.Json)
		if err != nil {
			return fabric.Payload{}, badRequest("payload json value cannot be encoded: %v", err)
		}
		// protojson deliberately varies its whitespace; compact it so the bytes
		// delivered to clients do not change from one build to the next.
		var buf bytes.Buffer
		if err := json.Compact(&buf, raw); err != nil {
			return fabric.Payload{}, badRequest("payload json value cannot be encoded: %v", err)
		}
		return fabric.Payload{Data: buf.Bytes()}, nil
	case *pb.Payload_JsonText:
		if !json.Valid([]byte(k.JsonText)) {
			return fabric.Payload{}, badRequest("payload json_text is not valid json")
		}
		return fabric.Payload{Data: []byte(k.JsonText)}, nil
	case *pb.Payload_Binary:
		return fabric.Payload{Data: k.Binary, Binary: true}, nil
	}
	return fabric.Payload{}, badRequest("payload kind is not supported")
}

// payloadOut converts a fabric payload for a response: JSON as a Value (so JSON
// clients of the control API see JSON, never base64), binary as bytes.
func payloadOut(p fabric.Payload) (*pb.Payload, error) {
	if p.Binary {
		return &pb.Payload{Kind: &pb.Payload_Binary{Binary: p.Data}}, nil
	}
	v, err := jsonValue(p.Data)
	if err != nil {
		return nil, err
	}
	return &pb.Payload{Kind: &pb.Payload_Json{Json: v}}, nil
}

// jsonValue converts raw JSON to a structpb.Value; nil or empty input gives nil.
// Numbers become float64, as google.protobuf.Value requires.
func jsonValue(raw []byte) (*structpb.Value, error) {
	if len(raw) == 0 {
		return nil, nil
	}
	v := &structpb.Value{}
	if err := protojson.Unmarshal(raw, v); err != nil {
		return nil, fmt.Errorf("stored json is invalid: %w", err)
	}
	return v, nil
}

func positionOut(p fabric.Position) *pb.Position {
	return &pb.Position{Epoch: p.Epoch, Offset: p.Offset}
}

func messageOut(m *fabric.Message) (*pb.RoomMessage, error) {
	payload, err := payloadOut(m.Payload)
	if err != nil {
		return nil, err
	}
	out := &pb.RoomMessage{
		Room:       m.Room,
		Epoch:      m.Pos.Epoch,
		Offset:     m.Pos.Offset,
		Payload:    payload,
		TimeUnixMs: m.Time.UnixMilli(),
	}
	if m.Publisher.User != "" || m.Publisher.Conn != "" {
		info, err := jsonValue(m.Publisher.Info)
		if err != nil {
			return nil, err
		}
		out.Publisher = &pb.ClientInfo{User: m.Publisher.User, Connection: m.Publisher.Conn, Info: info}
	}
	return out, nil
}

func eventOut(ev *fabric.Event) (*pb.Event, error) {
	var p *pb.Payload
	if ev.Payload != nil {
		var err error
		if p, err = payloadOut(*ev.Payload); err != nil {
			return nil, err
		}
	}
	return pbconv.Event(ev, p), nil
}

func nodeOut(n fabric.NodeInfo) *pb.NodeInfo {
	out := &pb.NodeInfo{
		Name:           n.Name,
		State:          pb.NodeState(n.State),
		ClientAddress:  n.ClientAddr,
		ControlAddress: n.ControlAddr,
		Version:        n.Version,
		Connections:    clampU32(n.Conns),
		Rooms:          clampU32(n.Rooms),
		Shards:         clampU32(n.Shards),
	}
	if !n.StartedAt.IsZero() {
		out.StartedAt = timestamppb.New(n.StartedAt)
	}
	return out
}

// clampU32 converts a count for a uint32 field, saturating instead of wrapping.
func clampU32(n int) uint32 {
	switch {
	case n < 0:
		return 0
	case uint64(n) > uint64(^uint32(0)):
		return ^uint32(0)
	}
	return uint32(n)
}

// errorOut converts a fabric error to the roomcast.v1.Error of a per-item result
// (broadcast results, stream acknowledgements).
func errorOut(err error) *pb.Error {
	code := fabric.CodeOf(err)
	msg := err.Error()
	if code == fabric.CodeInternal {
		msg = "internal error"
	}
	return &pb.Error{Code: pb.ErrorCode(code), Message: msg, Temporary: code.Temporary()}
}

// grpcCode maps a fabric code to a gRPC code; see the package doc.
func grpcCode(c fabric.Code) codes.Code {
	switch c {
	case fabric.CodeBadRequest, fabric.CodeUnknownCommand, fabric.CodeUnknownNamespace:
		return codes.InvalidArgument
	case fabric.CodeNotFound:
		return codes.NotFound
	case fabric.CodePermissionDenied:
		return codes.PermissionDenied
	case fabric.CodeLimitExceeded, fabric.CodeRoomFull, fabric.CodeRateLimited, fabric.CodeTooLarge:
		return codes.ResourceExhausted
	case fabric.CodeNotAvailable, fabric.CodeNotJoined, fabric.CodeAlreadyJoined:
		return codes.FailedPrecondition
	case fabric.CodeUnavailable:
		return codes.Unavailable
	case fabric.CodeTokenExpired:
		return codes.Unauthenticated
	}
	return codes.Internal
}

// toStatus converts an error from the fabric (or from request validation) to a gRPC
// status error. Internal errors are logged with their detail and returned without it.
func (s *Server) toStatus(ctx context.Context, method string, err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	switch {
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, err.Error())
	case errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, err.Error())
	}
	var fe *fabric.Error
	if !errors.As(err, &fe) || fe.Code == fabric.CodeInternal {
		s.log.ErrorContext(ctx, "control: internal error", "method", method, "err", err)
		st, _ := status.New(codes.Internal, "internal error").WithDetails(errorOut(err))
		return st.Err()
	}
	st := status.New(grpcCode(fe.Code), err.Error())
	if d, derr := st.WithDetails(errorOut(err)); derr == nil {
		st = d
	}
	return st.Err()
}

// badRequest returns a fabric BadRequest error, which maps to InvalidArgument.
func badRequest(format string, args ...any) error {
	return fabric.Errorf(fabric.CodeBadRequest, format, args...)
}
