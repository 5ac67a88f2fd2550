# bench/run: the HTTP routes of apps/suite.pl as a PSGI app (Starman, and
# pagi-server through PAGI::App::WrapPSGI), same status, content type and
# body bytes. Content-Length is set because the other servers send one.
# No WebSocket or SSE: PSGI has neither.
use strict;
use warnings;
use JSON::MaybeXS ();

my $JSON     = JSON::MaybeXS->new(utf8 => 1, canonical => 1);
my $BLOB_64K = 'x' x 65536;
my $CHUNK    = 'd' x 65536;
my $DOWNLOAD = 1073741824;

# The download body: an object with getline, n pieces of one chunk.
{
    package PAGI::Bench::Chunks;
    sub new { my ($class, $n, $chunk) = @_; bless { n => $n, chunk => $chunk }, $class }
    sub getline { my ($self) = @_; return undef if $self->{n}-- <= 0; $self->{chunk} }
    sub close { }
}

sub ok { my ($type, $body) = @_; [ 200, [ 'content-type' => $type, 'content-length' => length $body ], [$body] ] }

# Reads psgi.input in 64 KiB pieces; returns the body or, with $count_only, its length.
sub read_body {
    my ($env, $count_only) = @_;
    my ($body, $count, $buf) = ('', 0);
    my $input = $env->{'psgi.input'};
    while (my $n = $input->read($buf, 65536)) {
        $count += $n;
        $body .= $buf unless $count_only;
    }
    return $count_only ? $count : $body;
}

sub {
    my ($env) = @_;
    my ($method, $path) = @{$env}{qw(REQUEST_METHOD PATH_INFO)};
    return ok('text/plain', "Hello, World!\n") if $path eq '/';
    return ok('application/json', $JSON->encode({ message => 'Hello, World!' })) if $path eq '/json';
    return ok('application/octet-stream', $BLOB_64K) if $path eq '/64k';
    return ok('application/octet-stream', read_body($env)) if $path eq '/echo' && $method eq 'POST';
    return ok('text/plain', read_body($env, 1)) if $path eq '/upload' && $method eq 'POST';
    if ($path eq '/download') {
        # A pull iterator: one 64 KiB piece at a time, never the whole body.
        my $size = ($env->{QUERY_STRING} // '') =~ /\bbytes=(\d+)/ ? $1 : $DOWNLOAD;
        my $body = PAGI::Bench::Chunks->new($size / length $CHUNK, $CHUNK);
        return [ 200, [ 'content-type' => 'application/octet-stream', 'content-length' => $size ], $body ];
    }
    return [ 404, [ 'content-type' => 'text/plain', 'content-length' => 10 ], ["Not Found\n"] ];
};
