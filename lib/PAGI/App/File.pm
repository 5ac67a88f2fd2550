package PAGI::App::File;
use strict;
use warnings;

our $VERSION = '0.01';

use Carp ();
use Cwd ();
use File::Spec;
use Future::AsyncAwait;
use Time::Local ();

use PAGI::Middleware;

=head1 NAME

PAGI::App::File - a PAGI app serving the files of one directory

=head1 SYNOPSIS

    use PAGI::App::File;
    my $app = PAGI::App::File->new(root => '/srv/www')->to_app;

    # one file, whatever the path
    my $favicon = PAGI::App::File->new(file => 'public/favicon.ico')->to_app;

=head1 DESCRIPTION

Answers C<GET> and C<HEAD> requests with the file under C<root> named by the
request path (the scope's C<path> with its C<root_path> prefix removed, so
the app can be mounted). Other methods get C<405> with C<Allow: GET, HEAD>.
The body goes out through the server's file path
(C<< { type => 'http.response.body', file => $path, offset, length } >>), so
the file is never read into Perl.

=over

=item Content type

From the file name's extension: L<MIME::Types> when it is installed, else a
built-in table of common web types; C<application/octet-stream> when unknown
(option C<default_type>). C<text/*> types get C<; charset=utf-8> (option
C<text_charset>, C<undef> for none).

=item Validators and conditional GET

Every response carries C<ETag> (C<"MTIME-SIZE"> in hex) and C<Last-Modified>.
C<If-None-Match> (a list, weak comparison, or C<*>) answers C<304 Not
Modified> when it matches; without it, C<If-Modified-Since> answers C<304>
when the file is not newer (RFC 9110 13.1).

=item Ranges

C<Range: bytes=...> with one range answers C<206 Partial Content> with
C<Content-Range>; a range that cannot be satisfied answers C<416> with
C<Content-Range: bytes */SIZE>. Several ranges, or a malformed header, get
the whole file (C<200>), which RFC 9110 14.2 allows. C<If-Range> with a
different validator also gets the whole file. C<Accept-Ranges: bytes> is
always sent.

=item Path safety

The file served is always under C<root>. Refused with C<403>: a C<..> or
C<.> segment (after percent-decoding, so C<%2e%2e> too), a backslash or NUL,
a percent-encoded slash, backslash or NUL in C<raw_path> (C<%2f>, C<%5c>,
C<%00>), and any path whose real path (symbolic links resolved) is outside
the root's real path. A path naming nothing is C<404>; a directory is C<404>
here (L<PAGI::App::Directory> lists them).

=back

A C<lifespan> scope is accepted (there is nothing to start or stop);
other scope types (websocket, sse) make the app die (PAGI-SPEC 1.3).

=head1 METHODS

=head2 new

    PAGI::App::File->new(root => $dir, %options);
    PAGI::App::File->new(file => $path, %options);

=over

=item root

The directory to serve; it must exist. Stored as its real path, so a later
C<chdir> does not change what is served.

=item file

Serve this one file for every path (instead of C<root>).

=item default_type

Content type for unknown extensions; default C<application/octet-stream>.

=item text_charset

Charset added to C<text/*> types; default C<utf-8>; C<undef> adds none.

=item mime_types

A hash of extra or overriding types by extension, C<< { md => 'text/markdown' } >>.

=back

=cut

sub new {
    my ($class, %o) = @_;
    my $self = bless {
        default_type => 'application/octet-stream',
        text_charset => 'utf-8',
        %o,
    }, $class;
    if (defined $o{file}) {
        $self->_option_error(file => "'$o{file}' is not a readable file") unless -f $o{file} && -r _;
        $self->{file} = Cwd::realpath($o{file});
    }
    else {
        $self->_option_error(root => 'is required (the directory to serve)') unless defined $o{root};
        $self->_option_error(root => "'$o{root}' is not a directory") unless -d $o{root};
        $self->{root} = Cwd::realpath($o{root});
    }
    $self->_option_error(mime_types => 'must be a hash reference')
        if defined $o{mime_types} && ref $o{mime_types} ne 'HASH';
    $self->{mime_types} = { map { lc($_) => $o{mime_types}{$_} } keys %{ $o{mime_types} || {} } };
    return $self;
}

sub _option_error {
    my ($self, $name, $problem) = @_;
    Carp::croak((ref $self || $self) . ": option '$name' $problem");
}

=head2 to_app

The PAGI app (an C<async sub ($scope, $receive, $send)>).

=cut

sub to_app {
    my ($self) = @_;
    return async sub {
        my ($scope, $receive, $send) = @_;
        return await _lifespan($receive, $send) if $scope->{type} eq 'lifespan';
        die "PAGI::App::File: unsupported scope type '$scope->{type}'\n" unless $scope->{type} eq 'http';
        await $self->send_answer($scope, $send, $self->answer($scope));
    };
}

# Nothing to set up or tear down, but saying so keeps the server from
# logging that lifespan is unsupported.
async sub _lifespan {
    my ($receive, $send) = @_;
    while (1) {
        my $event = await $receive->();
        my $type = $event->{type} // '';
        if ($type eq 'lifespan.startup') {
            await $send->({ type => 'lifespan.startup.complete' });
        }
        elsif ($type eq 'lifespan.shutdown') {
            await $send->({ type => 'lifespan.shutdown.complete' });
            return;
        }
        else {
            return;
        }
    }
}

=head2 answer

    my $answer = $app->answer($scope);

What the app would respond, without sending it: a hash with C<status>,
C<headers> (pairs), and either C<body> or C<file>, C<offset> and C<length>.
L<PAGI::Middleware::Static> uses it to fall through on C<404>.

=cut

sub answer {
    my ($self, $scope) = @_;
    my $method = $scope->{method} // 'GET';
    return _plain(405, "Method Not Allowed\n", [ allow => 'GET, HEAD' ])
        unless $method eq 'GET' || $method eq 'HEAD';
    my ($path, $status) = $self->resolve($scope);
    return _plain($status, $status == 403 ? "Forbidden\n" : $status == 400 ? "Bad Request\n" : "Not Found\n")
        unless defined $path;
    return $self->directory_answer($scope, $path) if -d $path;
    return _plain(404, "Not Found\n") unless -f _;
    return _plain(403, "Forbidden\n") unless -r _;
    return $self->file_answer($scope, $path);
}

=head2 resolve

    my ($real_path, $status) = $app->resolve($scope);

The real path of what the request names, or C<(undef, 403)> for a refused
path and C<(undef, 404)> for a missing one (see L</Path safety>).

=cut

sub resolve {
    my ($self, $scope) = @_;
    return -e $self->{file} ? ($self->{file}) : (undef, 404) if defined $self->{file};
    my $raw = $scope->{raw_path};
    return (undef, 403) if defined $raw && $raw =~ /%(?:2f|5c|00)/i;
    my $path = $scope->{path} // '';
    my $mount = $scope->{root_path} // '';
    if (length $mount) {
        return (undef, 404) unless substr($path, 0, length $mount) eq $mount;
        $path = substr($path, length $mount);
    }
    # File names are bytes; a path that decoded as UTF-8 is encoded back.
    utf8::encode($path) if utf8::is_utf8($path);
    return (undef, 403) if $path =~ /[\\\0]/;
    my @segments = grep { length } split m{/}, $path;
    return (undef, 403) if grep { $_ eq '..' || $_ eq '.' } @segments;
    my $full = join '/', $self->{root}, @segments;
    return (undef, 404) unless -e $full;
    my $real = Cwd::realpath($full);
    return (undef, 404) unless defined $real;
    return (undef, 403) unless $self->inside_root($real);
    # "file.txt/" names a directory that does not exist.
    return (undef, 404) if $path =~ m{/\z} && !-d $real;
    return ($real);
}

=head2 inside_root

True when a real path is the root or below it.

=cut

sub inside_root {
    my ($self, $real) = @_;
    my $root = $self->{root};
    return 1 if $real eq $root;
    my $prefix = $root eq '/' ? '/' : "$root/";
    return substr($real, 0, length $prefix) eq $prefix;
}

=head2 directory_answer

What a request for a directory gets: C<404> here; L<PAGI::App::Directory>
lists it.

=cut

sub directory_answer { _plain(404, "Not Found\n") }

=head2 file_answer

    my $answer = $app->file_answer($scope, $real_path);

The answer for an existing file: validators, conditional GET and ranges.

=cut

sub file_answer {
    my ($self, $scope, $path) = @_;
    my @stat = stat $path or return _plain(404, "Not Found\n");
    my ($size, $mtime) = @stat[ 7, 9 ];
    my $etag = sprintf '"%x-%x"', $mtime, $size;
    my $last_modified = http_date($mtime);
    my $headers = $scope->{headers} || [];
    my @validators = ([ etag => $etag ], [ 'last-modified' => $last_modified ]);

    my $if_none_match = _joined($headers, 'if-none-match');
    if (defined $if_none_match) {
        return { status => 304, headers => \@validators, body => '' } if _etag_listed($if_none_match, $etag);
    }
    elsif (defined(my $since = parse_http_date(PAGI::Middleware->header($headers, 'if-modified-since')))) {
        return { status => 304, headers => \@validators, body => '' } if $mtime <= $since;
    }

    my @headers = ([ 'content-type' => $self->content_type($path) ], @validators, [ 'accept-ranges' => 'bytes' ]);
    my ($status, $offset, $length) = (200, 0, $size);
    my $range = PAGI::Middleware->header($headers, 'range');
    if (defined $range && ($scope->{method} // 'GET') eq 'GET' && _if_range_holds($headers, $etag, $mtime)) {
        my $wanted = _parse_range($range, $size);
        if ($wanted && $wanted eq 'unsatisfiable') {
            return { status => 416, body => "Range Not Satisfiable\n",
                     headers => [ [ 'content-type' => 'text/plain; charset=utf-8' ], [ 'content-range' => "bytes */$size" ],
                                  @validators, [ 'content-length' => length "Range Not Satisfiable\n" ] ] };
        }
        if ($wanted) {
            ($offset, $length) = @$wanted;
            $status = 206;
            push @headers, [ 'content-range' => sprintf 'bytes %d-%d/%d', $offset, $offset + $length - 1, $size ];
        }
    }
    push @headers, [ 'content-length' => $length ];
    return { status => $status, headers => \@headers, body => '' } unless $length;
    return { status => $status, headers => \@headers, file => $path, offset => $offset, length => $length };
}

=head2 send_answer

    await $app->send_answer($scope, $send, $answer);

Sends an answer; the body is left out for C<HEAD> (the headers, with the
C<Content-Length> a C<GET> would have, are the same).

=cut

async sub send_answer {
    my ($self, $scope, $send, $answer) = @_;
    await $send->({ type => 'http.response.start', status => $answer->{status}, headers => $answer->{headers} });
    if (($scope->{method} // '') eq 'HEAD' || !defined $answer->{file}) {
        my $body = ($scope->{method} // '') eq 'HEAD' ? '' : $answer->{body} // '';
        await $send->({ type => 'http.response.body', body => $body, more => 0 });
        return;
    }
    await $send->({ type => 'http.response.body', file => $answer->{file},
                    offset => $answer->{offset}, length => $answer->{length} });
}

sub _plain {
    my ($status, $text, $extra) = @_;
    my @headers = ([ 'content-type' => 'text/plain; charset=utf-8' ], [ 'content-length' => length $text ]);
    push @headers, [ @$extra ] if $extra;
    return { status => $status, headers => \@headers, body => $text };
}

# Several headers of one name are one comma-separated list (RFC 9110 5.3).
sub _joined {
    my ($headers, $name) = @_;
    my @values = PAGI::Middleware->header_all($headers, $name);
    return @values ? join(', ', @values) : undef;
}

# If-None-Match uses the weak comparison: W/ is ignored on both sides.
sub _etag_listed {
    my ($list, $etag) = @_;
    return 1 if $list =~ /\A\s*\*\s*\z/;
    (my $ours = $etag) =~ s{\AW/}{};
    for my $tag ($list =~ /((?:W\/)?"[^"]*")/g) {
        $tag =~ s{\AW/}{};
        return 1 if $tag eq $ours;
    }
    return 0;
}

# If-Range: the range applies only when the validator still matches (strong
# comparison for an entity tag, an exact date for Last-Modified).
sub _if_range_holds {
    my ($headers, $etag, $mtime) = @_;
    my $if_range = PAGI::Middleware->header($headers, 'if-range');
    return 1 unless defined $if_range;
    $if_range =~ s/\A\s+|\s+\z//g;
    return $if_range eq $etag if $if_range =~ /\A(?:W\/)?"/;
    my $date = parse_http_date($if_range);
    return defined $date && $date == $mtime;
}

# [offset, length], 'unsatisfiable', or undef (ignore the header: serve all).
sub _parse_range {
    my ($value, $size) = @_;
    return undef unless $value =~ /\A\s*bytes\s*=\s*(.*?)\s*\z/i;
    my @specs = grep { /\S/ } split /\s*,\s*/, $1;
    return undef unless @specs == 1;
    my ($first, $last) = $specs[0] =~ /\A(\d*)\s*-\s*(\d*)\z/ or return undef;
    if ($first eq '') {
        return undef if $last eq '';
        return 'unsatisfiable' if $last == 0 || $size == 0;
        my $length = $last > $size ? $size : $last;
        return [ $size - $length, $length ];
    }
    return undef if $last ne '' && $last < $first;
    return 'unsatisfiable' if $first >= $size;
    $last = $size - 1 if $last eq '' || $last >= $size;
    return [ $first + 0, $last - $first + 1 ];
}

=head2 content_type

    my $type = $app->content_type($path);

The content type sent for a file name (see L</DESCRIPTION>).

=cut

# Used when MIME::Types is not installed.
my %BUILTIN_TYPES = (
    html => 'text/html', htm => 'text/html', txt => 'text/plain', text => 'text/plain',
    css => 'text/css', csv => 'text/csv', md => 'text/markdown', xml => 'application/xml',
    js => 'text/javascript', mjs => 'text/javascript', json => 'application/json',
    map => 'application/json', wasm => 'application/wasm', pdf => 'application/pdf',
    zip => 'application/zip', gz => 'application/gzip', tar => 'application/x-tar',
    png => 'image/png', jpg => 'image/jpeg', jpeg => 'image/jpeg', gif => 'image/gif',
    svg => 'image/svg+xml', ico => 'image/vnd.microsoft.icon', webp => 'image/webp', avif => 'image/avif',
    bmp => 'image/bmp', woff => 'font/woff', woff2 => 'font/woff2', ttf => 'font/ttf', otf => 'font/otf',
    mp3 => 'audio/mpeg', ogg => 'audio/ogg', wav => 'audio/wav', mp4 => 'video/mp4', webm => 'video/webm',
    pl => 'text/plain', pm => 'text/plain', sh => 'text/plain',
);

our $MIME_TYPES;    # the MIME::Types object, 0 when it is not installed (tests set 0)

sub content_type {
    my ($self, $path) = @_;
    my ($ext) = $path =~ m{\.([^./]+)\z};
    my $type;
    if (defined $ext) {
        $ext = lc $ext;
        $type = $self->{mime_types}{$ext};
        $MIME_TYPES //= eval { require MIME::Types; MIME::Types->new } || 0;
        if (!defined $type && $MIME_TYPES) {
            my $found = $MIME_TYPES->mimeTypeOf($ext);
            $type = "$found" if $found;
        }
        $type //= $BUILTIN_TYPES{$ext};
    }
    $type //= $self->{default_type};
    $type .= "; charset=$self->{text_charset}" if defined $self->{text_charset} && $type =~ m{\Atext/} && $type !~ /;/;
    return $type;
}

=head1 FUNCTIONS

=head2 http_date, parse_http_date

    my $text = PAGI::App::File::http_date($epoch);        # Sun, 06 Nov 1994 08:49:37 GMT
    my $epoch = PAGI::App::File::parse_http_date($text);  # undef when not a date

The IMF-fixdate format, and parsing of it and of the two obsolete formats
RFC 9110 5.6.7 requires recipients to accept.

=cut

my @DAYS = qw(Sun Mon Tue Wed Thu Fri Sat);
my @MONTHS = qw(Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec);
my %MONTH = map { lc($MONTHS[$_]) => $_ } 0 .. 11;

sub http_date {
    my ($epoch) = @_;
    my ($s, $m, $h, $d, $mon, $y, $wday) = gmtime $epoch;
    return sprintf '%s, %02d %s %04d %02d:%02d:%02d GMT', $DAYS[$wday], $d, $MONTHS[$mon], $y + 1900, $h, $m, $s;
}

sub parse_http_date {
    my ($text) = @_;
    return undef unless defined $text;
    my ($d, $mon, $y, $h, $m, $s);
    if ($text =~ /\A\s*\w{3},\s+(\d{1,2})\s+(\w{3})\s+(\d{4})\s+(\d\d):(\d\d):(\d\d)\s+GMT\s*\z/i) {
        ($d, $mon, $y, $h, $m, $s) = ($1, $2, $3, $4, $5, $6);
    }
    elsif ($text =~ /\A\s*\w+,\s+(\d{1,2})-(\w{3})-(\d\d)\s+(\d\d):(\d\d):(\d\d)\s+GMT\s*\z/i) {
        ($d, $mon, $y, $h, $m, $s) = ($1, $2, $3, $4, $5, $6);
        $y += $y < 70 ? 2000 : 1900;
    }
    elsif ($text =~ /\A\s*\w{3}\s+(\w{3})\s+(\d{1,2})\s+(\d\d):(\d\d):(\d\d)\s+(\d{4})\s*\z/) {
        ($mon, $d, $h, $m, $s, $y) = ($1, $2, $3, $4, $5, $6);
    }
    else {
        return undef;
    }
    my $month = $MONTH{ lc $mon } // return undef;
    return eval { Time::Local::timegm($s, $m, $h, $d, $month, $y) };
}

=head1 SEE ALSO

L<PAGI::App::Directory>, L<PAGI::Middleware::Static>.

=cut

1;
