package k8s

import (
	"strings"
	"testing"

	"golang.org/x/net/dns/dnsmessage"
)

// chaosReply answers query as CoreDNS's chaos plugin does (the reply
// echoes the question and carries one CH TXT record), with header tweaks.
func chaosReply(t *testing.T, query []byte, txt []string, edit func(*dnsmessage.Message)) []byte {
	t.Helper()
	var m dnsmessage.Message
	if err := m.Unpack(query); err != nil {
		t.Fatal(err)
	}
	m.Response, m.Authoritative = true, true
	m.Answers = []dnsmessage.Resource{{
		Header: dnsmessage.ResourceHeader{Name: m.Questions[0].Name, Type: dnsmessage.TypeTXT, Class: dnsmessage.ClassCHAOS},
		Body:   &dnsmessage.TXTResource{TXT: txt},
	}}
	if edit != nil {
		edit(&m)
	}
	b, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestChaosQueryAndAnswer: the query is one `CH TXT hostname.bind`
// question; an answer gives the TXT only when it is the reply to that
// query (ID, response bit, success, CH TXT of the same name).
func TestChaosQueryAndAnswer(t *testing.T) {
	q, err := chaosQuery(0x4242)
	if err != nil {
		t.Fatal(err)
	}
	var m dnsmessage.Message
	if err := m.Unpack(q); err != nil {
		t.Fatal(err)
	}
	if m.ID != 0x4242 || m.Response || len(m.Questions) != 1 {
		t.Fatalf("query %+v", m)
	}
	if qq := m.Questions[0]; qq.Name.String() != "hostname.bind." || qq.Type != dnsmessage.TypeTXT || qq.Class != dnsmessage.ClassCHAOS {
		t.Fatalf("question %+v", qq)
	}
	got, err := chaosAnswer(chaosReply(t, q, []string{"coredns-7d9c-abcde"}, nil), 0x4242)
	if err != nil || got != "coredns-7d9c-abcde" {
		t.Fatalf("answer %q, %v", got, err)
	}
	for name, edit := range map[string]func(*dnsmessage.Message){
		"other ID":     func(m *dnsmessage.Message) { m.ID++ },
		"not a reply":  func(m *dnsmessage.Message) { m.Response = false },
		"refused":      func(m *dnsmessage.Message) { m.RCode = dnsmessage.RCodeRefused; m.Answers = nil },
		"no answer":    func(m *dnsmessage.Message) { m.Answers = nil },
		"class IN":     func(m *dnsmessage.Message) { m.Answers[0].Header.Class = dnsmessage.ClassINET },
		"other name":   func(m *dnsmessage.Message) { m.Answers[0].Header.Name = dnsmessage.MustNewName("version.bind.") },
		"empty string": func(m *dnsmessage.Message) { m.Answers[0].Body = &dnsmessage.TXTResource{TXT: []string{""}} },
	} {
		if got, err := chaosAnswer(chaosReply(t, q, []string{"pod"}, edit), 0x4242); err == nil {
			t.Errorf("%s: answer %q accepted", name, got)
		} else if strings.TrimSpace(err.Error()) == "" {
			t.Errorf("%s: empty error", name)
		}
	}
}
