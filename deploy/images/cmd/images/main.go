// Command images builds lbpath's container images (deploy/images.Product) as
// OCI archives, without a Docker daemon or a network, and prints each
// image's ref, manifest digest and sizes. `make images` runs it.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"text/tabwriter"

	"github.com/lbpath/lbpath/deploy/images"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("images", flag.ContinueOnError)
	fs.SetOutput(stderr)
	opt := images.Options{Images: images.Product}
	fs.StringVar(&opt.OutDir, "out", "", "directory for the <name>.tar OCI archives (default <module root>/.bin/images)")
	fs.StringVar(&opt.Registry, "registry", images.DefaultRegistry, "registry and repository prefix of every ref")
	fs.StringVar(&opt.Tag, "tag", "", "tag of every image (default: the Helm chart's appVersion)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "images: unexpected argument %q (flags only)\n", fs.Arg(0))
		return 2
	}
	if err := images.CheckRegistry(opt.Registry); err != nil {
		fmt.Fprintf(stderr, "images: -registry: %v\n", err)
		return 2
	}
	if err := images.CheckTag(opt.Tag); opt.Tag != "" && err != nil {
		fmt.Fprintf(stderr, "images: -tag: %v\n", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	built, err := images.Build(ctx, opt)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	tw := tabwriter.NewWriter(stdout, 0, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "REF\tDIGEST\tCOMPRESSED\tUNCOMPRESSED\tARCHIVE")
	for _, b := range built {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", b.Ref, b.Digest, mib(b.Size), mib(b.Uncompressed), b.Archive)
	}
	_ = tw.Flush()
	return 0
}

func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }
