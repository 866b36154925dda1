package capture

import (
	"encoding/binary"
	"testing"
)

// FuzzDecode: any bytes from the ring buffer decode or fail cleanly; a
// decoded event's addresses are valid and its ports are what the record says.
func FuzzDecode(f *testing.F) {
	rec := make([]byte, EventSize)
	binary.LittleEndian.PutUint16(rec[92:], 2)
	f.Add(rec)
	v6 := make([]byte, EventSize)
	binary.LittleEndian.PutUint16(v6[92:], 10)
	v6[94] = byte(EventClose)
	f.Add(v6)
	f.Add([]byte{1, 2, 3})
	f.Add(make([]byte, EventSize+7))
	f.Fuzz(func(t *testing.T, b []byte) {
		var e Event
		err := Decode(b, &e)
		if len(b) < MinEventSize {
			if err == nil {
				t.Fatalf("short record of %d bytes decoded", len(b))
			}
			return
		}
		if err != nil {
			return
		}
		if !e.Local.Addr().IsValid() || !e.Remote.Addr().IsValid() {
			t.Fatalf("decoded invalid address: %+v", e)
		}
		if e.Local.Port() != binary.LittleEndian.Uint16(b[88:]) {
			t.Fatalf("port mismatch")
		}
	})
}
