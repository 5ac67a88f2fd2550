package PAGI::Middleware::Gzip;
use strict;
use warnings;

our $VERSION = '0.01';

use parent 'PAGI::Middleware';
use Compress::Raw::Zlib qw(Z_OK Z_STREAM_END Z_SYNC_FLUSH Z_FINISH WANT_GZIP MAX_WBITS Z_DEFAULT_COMPRESSION);
use Future::AsyncAwait;

=head1 NAME

PAGI::Middleware::Gzip - gzip or deflate compressible responses, streaming

=head1 SYNOPSIS

    enable 'Gzip';
    enable 'Gzip', min_size => 256, level => 6, types => [ 'text/', 'application/json' ];

=head1 DESCRIPTION

Compresses C<http> responses with C<gzip> (preferred) or C<deflate> (the
zlib format of RFC 9110 8.4.1.2) when the request's C<Accept-Encoding>
allows one of them (q-values honoured, C<*> counts, C<q=0> refuses).

A response is compressed only when all of these hold: the request is not
C<HEAD>; the status is 200, 201, 202 or 203; the C<Content-Type> is
compressible (see C<types>); the app set no C<Content-Encoding> and no
C<Content-Range>; C<Cache-Control> does not say C<no-transform>; and a
known C<Content-Length> is at least C<min_size>. A response of unknown
length (streamed) is compressed whatever its size.

A compressed response loses its C<Content-Length> (the server frames it
with chunked encoding), gets C<Content-Encoding> and, for an entity tag,
the weak form C<W/"..."> (the bytes differ from the uncompressed ones). Any
response with a compressible type gets C<Vary: Accept-Encoding>, compressed
or not, so caches keep both forms apart.

Streaming-safe: nothing is buffered. Each body event is compressed and
flushed (C<Z_SYNC_FLUSH>) at once, so a client can decompress every chunk
as it arrives; the last event finishes the stream. A C<file> or C<fh> body
is read and compressed in 64 KiB pieces. Uses L<Compress::Raw::Zlib>
(core Perl).

=head1 OPTIONS

=over

=item types

Content types to compress: a list of prefixes (C<text/> matches every
text type) and exact types. Default: C<text/>, C<application/json>,
C<application/javascript>, C<application/xml>, C<image/svg+xml>, and any
C<+json> or C<+xml> type.

=item min_size

Smallest C<Content-Length> compressed; default 860 bytes (below that,
compression rarely pays for its headers).

=item level

zlib level 1 (fastest) to 9 (smallest); default zlib's (6).

=back

=cut

sub init {
    my ($self) = @_;
    $self->{types} //= [qw(text/ application/json application/javascript application/xml image/svg+xml)];
    $self->option_error(types => 'must be an array reference') unless ref $self->{types} eq 'ARRAY';
    $self->{min_size} //= 860;
    $self->option_error(min_size => 'must be a whole number of bytes') unless $self->{min_size} =~ /\A\d+\z/;
    if (defined $self->{level}) {
        $self->option_error(level => 'must be 1 to 9') unless $self->{level} =~ /\A[1-9]\z/;
    }
}

sub _compressible {
    my ($self, $type) = @_;
    return 0 unless defined $type;
    $type = lc $type;
    $type =~ s/\s*;.*//s;
    return 1 if $type =~ m{\+(?:json|xml)\z};
    for my $want (@{ $self->{types} }) {
        return 1 if $want =~ m{/\z} ? index($type, $want) == 0 : $type eq lc $want;
    }
    return 0;
}

# 'gzip', 'deflate' or undef, from an Accept-Encoding value.
sub _negotiate {
    my ($accept) = @_;
    return undef unless defined $accept;
    my %q;
    for my $item (split /\s*,\s*/, lc $accept) {
        my ($coding, @params) = split /\s*;\s*/, $item;
        next unless defined $coding && length $coding;
        my $q = 1;
        for (@params) { $q = $1 if /\Aq\s*=\s*([0-9.]+)\z/ }
        $q{$coding} = $q;
    }
    my %weight;
    for my $coding (qw(gzip deflate)) {
        $weight{$coding} = exists $q{$coding} ? $q{$coding} : exists $q{'*'} ? $q{'*'} : 0;
    }
    $weight{gzip} = $q{'x-gzip'} if !exists $q{gzip} && exists $q{'x-gzip'};
    return undef unless $weight{gzip} > 0 || $weight{deflate} > 0;
    return $weight{gzip} >= $weight{deflate} ? 'gzip' : 'deflate';
}

my %COMPRESSED_STATUS = map { $_ => 1 } 200, 201, 202, 203;

async sub call {
    my ($self, $scope, $receive, $send, $app) = @_;
    my $coding = ($scope->{method} // '') eq 'HEAD' ? undef : _negotiate($self->header_joined($scope->{headers}, 'accept-encoding'));
    my ($deflater, $passing);
    my $gzip_send = async sub {
        my ($event) = @_;
        my $type = $event->{type};
        if ($type eq 'http.response.start') {
            my $headers = $event->{headers} || [];
            my $compressible = $self->_compressible($self->header($headers, 'content-type'));
            return await $send->($event) unless $compressible;
            $headers = $self->add_vary($headers, 'Accept-Encoding');
            my $length = $self->header($headers, 'content-length');
            if ($coding && $COMPRESSED_STATUS{ $event->{status} // 0 }
                && !defined $self->header($headers, 'content-encoding')
                && !defined $self->header($headers, 'content-range')
                && ($self->header($headers, 'cache-control') // '') !~ /no-transform/i
                && !(defined $length && $length < $self->{min_size})) {
                $deflater = $self->_deflater($coding);
                $headers = [ map { my $n = lc $_->[0];
                                   $n eq 'content-length' ? () :
                                   $n eq 'etag' && $_->[1] !~ m{\AW/} ? [ $_->[0], "W/$_->[1]" ] : $_ } @$headers ];
                push @$headers, [ 'content-encoding' => $coding ];
            }
            return await $send->({ %$event, headers => $headers });
        }
        return await $send->($event) unless $deflater && $type eq 'http.response.body';
        if (defined $event->{file} || defined $event->{fh}) {
            return await $self->_send_file_body($deflater, $send, $event);
        }
        my $out = _deflate($deflater, $event->{body} // '', $event->{more} ? Z_SYNC_FLUSH : Z_FINISH);
        await $send->({ type => 'http.response.body', body => $out, more => $event->{more} ? 1 : 0 });
    };
    await $app->($scope, $receive, $gzip_send);
}

sub header_joined {
    my ($self, $headers, $name) = @_;
    my @values = $self->header_all($headers, $name);
    return @values ? join(', ', @values) : undef;
}

sub _deflater {
    my ($self, $coding) = @_;
    my ($d, $status) = Compress::Raw::Zlib::Deflate->new(
        -AppendOutput => 1,
        -Level        => $self->{level} // Z_DEFAULT_COMPRESSION,
        -WindowBits   => $coding eq 'gzip' ? WANT_GZIP : MAX_WBITS,
    );
    die "PAGI::Middleware::Gzip: cannot start zlib: $status\n" unless $status == Z_OK;
    return $d;
}

sub _deflate {
    my ($d, $bytes, $flush) = @_;
    my $out = '';
    if (length $bytes) {
        my $status = $d->deflate($bytes, $out);
        die "PAGI::Middleware::Gzip: deflate failed: $status\n" unless $status == Z_OK;
    }
    my $status = $d->flush($out, $flush);
    die "PAGI::Middleware::Gzip: flush failed: $status\n" unless $status == Z_OK || $status == Z_STREAM_END;
    return $out;
}

# A file or handle body, read in pieces; it completes the body (PAGI-SPEC 3.1.2).
async sub _send_file_body {
    my ($self, $deflater, $send, $event) = @_;
    my $fh = $event->{fh};
    if (!$fh) {
        open $fh, '<:raw', $event->{file} or die "PAGI::Middleware::Gzip: cannot open $event->{file}: $!\n";
    }
    seek $fh, $event->{offset}, 0 or die "PAGI::Middleware::Gzip: cannot seek: $!\n" if $event->{offset};
    my $left = $event->{length};
    while (1) {
        my $want = defined $left && $left < 65536 ? $left : 65536;
        my $got = $want ? read($fh, my $piece, $want) : 0;
        die "PAGI::Middleware::Gzip: read failed: $!\n" unless defined $got;
        $left -= $got if defined $left;
        my $last = !$got || (defined $left && $left <= 0);
        my $out = _deflate($deflater, $got ? $piece : '', $last ? Z_FINISH : Z_SYNC_FLUSH);
        await $send->({ type => 'http.response.body', body => $out, more => $last ? 0 : 1 });
        last if $last;
    }
    close $fh if defined $event->{file};
}

=head1 SEE ALSO

L<PAGI::Middleware>, L<Compress::Raw::Zlib>.

=cut

1;
