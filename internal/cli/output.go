package cli

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/roomcast/roomcast/gen/roomcast/v1"
)

// printer writes results as protojson (one compact object per line) or as
// human-friendly tables.
type printer struct {
	w    io.Writer
	json bool
}

func newPrinter(w io.Writer, asJSON bool) *printer {
	return &printer{w: w, json: asJSON}
}

// proto writes m as one line of JSON. protojson's output is compacted because it
// deliberately varies its whitespace between runs.
func (p *printer) proto(m proto.Message) error {
	// Zero counts and empty lists are emitted so scripts can rely on every field
	// being present (`jq .connections` is 0, not null).
	b, err := protojson.MarshalOptions{EmitDefaultValues: true}.Marshal(m)
	if err != nil {
		return fmt.Errorf("encode response: %w", err)
	}
	var buf bytes.Buffer
	if err := json.Compact(&buf, b); err != nil {
		return fmt.Errorf("encode response: %w", err)
	}
	buf.WriteByte('\n')
	_, err = p.w.Write(buf.Bytes())
	return err
}

// table writes rows under a header, aligned in columns.
func (p *printer) table(header []string, rows [][]string) error {
	tw := tabwriter.NewWriter(p.w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, strings.Join(header, "\t"))
	for _, r := range rows {
		fmt.Fprintln(tw, strings.Join(r, "\t"))
	}
	return tw.Flush()
}

// line writes one line of text.
func (p *printer) line(format string, args ...any) error {
	_, err := fmt.Fprintf(p.w, format+"\n", args...)
	return err
}

// payloadText renders a payload for humans: JSON as compact JSON, bytes as
// "base64:<data>".
func payloadText(pl *pb.Payload) string {
	switch k := pl.GetKind().(type) {
	case *pb.Payload_Json:
		return valueText(k.Json)
	case *pb.Payload_JsonText:
		var buf bytes.Buffer
		if json.Compact(&buf, []byte(k.JsonText)) == nil {
			return buf.String()
		}
		return k.JsonText
	case *pb.Payload_Binary:
		return "base64:" + base64.StdEncoding.EncodeToString(k.Binary)
	}
	return ""
}

// valueText renders a JSON value compactly; empty for nil.
func valueText(v *structpb.Value) string {
	if v == nil {
		return ""
	}
	b, err := protojson.Marshal(v)
	if err != nil {
		return ""
	}
	var buf bytes.Buffer
	if json.Compact(&buf, b) != nil {
		return string(b)
	}
	return buf.String()
}

// timeText renders a timestamp in UTC with milliseconds; "-" when unset.
func timeText(ts *timestamppb.Timestamp) string {
	if ts == nil {
		return "-"
	}
	return ts.AsTime().UTC().Format("2006-01-02T15:04:05.000Z")
}

// unixMsText renders Unix milliseconds like timeText.
func unixMsText(ms int64) string {
	if ms == 0 {
		return "-"
	}
	return time.UnixMilli(ms).UTC().Format("2006-01-02T15:04:05.000Z")
}

// dash replaces an empty cell with "-" so columns stay readable.
func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func u64(v uint64) string { return strconv.FormatUint(v, 10) }
func u32(v uint32) string { return strconv.FormatUint(uint64(v), 10) }

// enumText turns "EVENT_TYPE_CLIENT_MESSAGE" into "client_message".
func enumText(name, prefix string) string {
	return strings.ToLower(strings.TrimPrefix(name, prefix))
}
