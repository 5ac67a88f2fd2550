package PAGI::Simple::Context;
use v5.36;
use Carp ();
use Future;
use Future::AsyncAwait;
use Scalar::Util qw(blessed);
use Encode ();
use JSON::MaybeXS ();
use Cookie::Baker ();
use POSIX ();
use PAGI::Simple::Request;

our $VERSION = '0.01';

=head1 NAME

PAGI::Simple::Context - the C<$c> a PAGI::Simple handler receives

=head1 SYNOPSIS

    $app->get('/hello/:name' => sub ($c) {
        my $name = $c->path_params->{name};
        $c->header('x-greeting' => 'yes')->cookie(seen => 1, path => '/');
        $c->json({ hello => $name, page => $c->param('page') });
    });

=head1 REQUEST

=over

=item req

The L<PAGI::Simple::Request>.

=item method, path, query_string, path_params, param($name), params, query_params($name), json_body, body_params, uploads, upload($name), cookie($name)

Shortcuts. C<param> looks in path params, then the query, then form fields
(first found; the last value of a multi-valued one). C<params> is a
L<Hash::MultiValue> of form fields, then query, then path params (later
sources override earlier ones in C<get>, all values kept in C<get_all>).
C<cookie($name)> with one argument reads a request cookie. All are
synchronous because the framework reads bounded bodies before the handler.

=back

=head1 RESPONSE

Every helper that sends returns a Future; plain handlers may ignore it (the
framework awaits what was sent before it finishes), async ones may await it.

=over

=item status($code), header($name => $value), res_header($name => $value), content_type($type), cookie($name => $value, %attrs)

Chainable setters. C<header> replaces a header of that name, C<res_header>
adds another. C<cookie> adds a C<Set-Cookie> (L<Cookie::Baker> attributes:
C<path>, C<domain>, C<expires>, C<max-age>, C<secure>, C<httponly>,
C<samesite>).

=item text($string, [$status]), html($string, [$status]), json($data, [$status])

Character strings are UTF-8-encoded; JSON has canonical key order.

=item redirect($url, [$status = 302])

=item send_response($bytes) / send_file($path, %opt)

C<send_file> serves a file with C<ETag>, C<Last-Modified>, C<Accept-Ranges>,
single C<Range> requests (206, or 416 when unsatisfiable), C<If-None-Match>
and C<If-Modified-Since> (304), and a content type from the extension
(C<< content_type => ... >> overrides). The server streams the file.

=item stream(async sub ($writer) { await $writer->write($bytes) ... }, [content_type => ...])

A chunked streaming response: the start is sent first, every C<write> is a
body piece, and the response ends when the sub's Future completes (or
C<< $writer->close >>).

=item error($code, [$message]) / abort($code, [$message])

Throw a L<PAGI::Simple::Abort>; the framework renders it with the app's
error handler for that code, or as C<text/plain> C<< <Status Text> >> or
C<< <Status Text>: <message> >>.

=item url_for($name, \%params)

The path of a named route, with the scope's C<root_path> in front.

=back

=head1 OTHER

C<stash> (per-request hashref), C<session> (see L<PAGI::Simple/SESSIONS>),
C<app>, C<scope>, C<receive>, C<send>, C<response_started>.

=cut

my $JSON = JSON::MaybeXS->new(utf8 => 1, canonical => 1, allow_nonref => 1);

our %STATUS_TEXT = (
    200 => 'OK', 201 => 'Created', 202 => 'Accepted', 204 => 'No Content', 206 => 'Partial Content',
    301 => 'Moved Permanently', 302 => 'Found', 303 => 'See Other', 304 => 'Not Modified',
    307 => 'Temporary Redirect', 308 => 'Permanent Redirect', 400 => 'Bad Request',
    401 => 'Unauthorized', 403 => 'Forbidden', 404 => 'Not Found', 405 => 'Method Not Allowed',
    406 => 'Not Acceptable', 409 => 'Conflict', 410 => 'Gone', 411 => 'Length Required',
    412 => 'Precondition Failed', 413 => 'Payload Too Large', 415 => 'Unsupported Media Type',
    416 => 'Range Not Satisfiable', 422 => 'Unprocessable Content', 429 => 'Too Many Requests',
    500 => 'Internal Server Error', 501 => 'Not Implemented', 502 => 'Bad Gateway',
    503 => 'Service Unavailable',
);
sub status_text ($class, $code) { $STATUS_TEXT{$code} // 'Unknown Status' }

sub new ($class, %args) {
    return bless { status => 200, res_headers => [], stash => {}, pending => [], %args }, $class;
}

# What the framework calls once per request: new without the argument list.
sub _for_request ($class, $app, $scope, $receive, $send, $app_path, $path_params) {
    return bless { status => 200, res_headers => [], stash => {}, pending => [], app => $app, scope => $scope,
        receive => $receive, send => $send, app_path => $app_path, path_params => $path_params }, $class;
}

sub app ($self)     { $self->{app} }
sub scope ($self)   { $self->{scope} }
sub receive ($self) { $self->{receive} }
sub send ($self)    { $self->{send} }
sub stash ($self)   { $self->{stash} }

sub req ($self) {
    # req_body: the body the framework read before the handler (undef for raw_body routes).
    $self->{req} //= PAGI::Simple::Request->new(scope => $self->{scope}, receive => $self->{receive},
        app_path => $self->{app_path}, path_params => $self->{path_params}, body => $self->{req_body});
}

sub method ($self)       { $self->req->method }
sub path ($self)         { $self->req->path }
sub query_string ($self) { $self->req->query_string }
sub path_params ($self)  { $self->{path_params} //= {} }
sub json_body ($self)    { $self->req->json_body }
sub body_params ($self)  { $self->req->body_params }
sub uploads ($self)      { $self->req->uploads }
sub upload ($self, $n)   { $self->req->upload($n) }
sub query_params ($self, $n) { $self->req->query_params($n) }

sub param ($self, $name) {
    my $pp = $self->path_params;
    return $pp->{$name} if exists $pp->{$name};
    my $q = $self->req->query;
    return scalar $q->get($name) if defined $q->get($name);
    return $self->req->body_param($name);
}

sub params ($self) {
    my $merged = Hash::MultiValue->new($self->req->body_params->flatten, $self->req->query->flatten,
        map { ($_ => $self->path_params->{$_}) } sort keys %{ $self->path_params });
    return $merged;
}

sub session ($self) { $self->{session} //= $self->app->_session_manager->load($self) }
sub session_clear ($self) { $self->session; %{ $self->{session} } = (); $self->{session_clear} = 1; $self }

sub url_for ($self, $name, $params = {}) {
    ($self->{scope}{root_path} // '') . $self->app->url_for($name, $params);
}

# --- response state ---

sub response_started ($self) { $self->{started} ? 1 : 0 }
sub mark_response_started ($self) { $self->{started} = 1; $self }

sub status ($self, $code = undef) {
    return $self->{status} unless defined $code;
    Carp::croak("status: '$code' is not an HTTP status code") unless $code =~ /\A[1-5][0-9][0-9]\z/;
    $self->{status} = $code;
    return $self;
}

sub _check_header ($name, $value) {
    Carp::croak("header name '$name' is not a token") unless $name =~ /\A[!#\$%&'*+\-.^_`|~0-9A-Za-z]+\z/;
    Carp::croak("header '$name': value contains CR, LF or NUL") if $value =~ /[\r\n\0]/;
}

sub header ($self, $name, $value) {
    _check_header($name, $value);
    my $lc = lc $name;
    $self->{res_headers} = [ grep { $_->[0] ne $lc } @{ $self->{res_headers} } ];
    push @{ $self->{res_headers} }, [ $lc, _bytes($value) ];
    return $self;
}

sub res_header ($self, $name, $value) {
    _check_header($name, $value);
    push @{ $self->{res_headers} }, [ lc $name, _bytes($value) ];
    return $self;
}

sub content_type ($self, $type) { $self->header('content-type' => $type) }

sub cookie ($self, $name, @rest) {
    return $self->req->cookie($name) unless @rest;
    my ($value, %attrs) = @rest;
    my $baked = Cookie::Baker::bake_cookie($name, { value => $value, %attrs });
    return $self->res_header('set-cookie' => $baked);
}

sub _bytes ($s) {
    return $s // '' unless utf8::is_utf8($s);
    return Encode::encode('UTF-8', $s);
}

sub _has_header ($self, $name) {
    for (@{ $self->{res_headers} }) { return 1 if $_->[0] eq $name }
    return 0;
}

sub _track ($self, $f) { push @{ $self->{pending} }, $f; $f }

sub _start_event ($self) {
    Carp::croak('Response already started') if $self->{started};
    $self->{started} = 1;
    # An async session store's save: the response start waits for it (_send_start).
    $self->{session_saving} = $self->{app}->_session_manager->save($self) if $self->{session};
    return { type => 'http.response.start', status => $self->{status}, headers => $self->{res_headers} };
}

# Sends the start event, after the session store's save when one is pending.
# A failed save answers 500 instead and fails, so the response's body is not sent.
sub _send_start ($self, $start) {
    my $send = $self->{send};
    my $saving = delete $self->{session_saving} or return $send->($start);
    return $saving->then(sub (@) { $send->($start) }, sub ($err, @) {
        my $body = 'Internal Server Error';
        return $send->({ type => 'http.response.start', status => 500, headers => [
                [ 'content-type', 'text/plain; charset=utf-8' ], [ 'content-length', length $body ] ] })
            ->then(sub (@) { $send->({ type => 'http.response.body', body => $body, more => 0 }) })
            ->then(sub (@) { Future->fail("session store failed to save the session: $err") });
    });
}

sub send_response ($self, $body = '') {
    my $start = $self->_start_event;
    my $bytes = _bytes($body);
    my $status = $self->{status};
    my $no_body = ($self->{scope}{method} // 'GET') eq 'HEAD' || $status == 204 || $status == 304;
    push @{ $start->{headers} }, [ 'content-length', length $bytes ]
        unless $status == 204 || $status == 304 || $self->_has_header('content-length');
    my $send = $self->{send};
    my $body_event = { type => 'http.response.body', body => $no_body ? '' : $bytes, more => 0 };
    my $started = $self->_send_start($start);
    # The server usually accepts the start at once: send the body now rather
    # than through ->then (a closure and a Future less per response).
    my $sent = $started->is_done
        ? eval { $send->($body_event) } // Future->fail($@)
        : $started->then(sub { $send->($body_event) });
    push @{ $self->{pending} }, $sent;
    return $sent;
}

sub _respond ($self, $type, $body, $status) {
    $self->status($status) if defined $status;
    # $type is one of ours, a valid header value: no need to check it again.
    push @{ $self->{res_headers} }, [ 'content-type', $type ] unless $self->_has_header('content-type');
    return $self->send_response($body);
}

sub text ($self, $body, $status = undef) { $self->_respond('text/plain; charset=utf-8', $body, $status) }
sub html ($self, $body, $status = undef) { $self->_respond('text/html; charset=utf-8', $body, $status) }
sub json ($self, $data, $status = undef) {
    $self->_respond('application/json; charset=utf-8', $JSON->encode($data), $status);
}

sub redirect ($self, $url, $status = 302) {
    $self->status($status)->header(location => $url);
    return $self->send_response('');
}

sub error ($self, $code, $message = undef) { PAGI::Simple::Abort->throw($code, $message, $self) }
sub abort ($self, $code, $message = undef) { $self->error($code, $message) }

# --- files ---

our %MIME = (
    html => 'text/html; charset=utf-8', htm => 'text/html; charset=utf-8', txt => 'text/plain; charset=utf-8',
    css => 'text/css; charset=utf-8', js => 'text/javascript; charset=utf-8', mjs => 'text/javascript; charset=utf-8',
    json => 'application/json', xml => 'application/xml', svg => 'image/svg+xml', png => 'image/png',
    jpg => 'image/jpeg', jpeg => 'image/jpeg', gif => 'image/gif', webp => 'image/webp', ico => 'image/x-icon',
    pdf => 'application/pdf', zip => 'application/zip', gz => 'application/gzip', wasm => 'application/wasm',
    woff => 'font/woff', woff2 => 'font/woff2', mp4 => 'video/mp4', mp3 => 'audio/mpeg', csv => 'text/csv; charset=utf-8',
    md => 'text/markdown; charset=utf-8',
);

sub http_date ($class, $epoch) { POSIX::strftime('%a, %d %b %Y %H:%M:%S GMT', gmtime $epoch) }

my %MON = (Jan => 0, Feb => 1, Mar => 2, Apr => 3, May => 4, Jun => 5, Jul => 6, Aug => 7, Sep => 8, Oct => 9, Nov => 10, Dec => 11);
sub _parse_http_date ($s) {
    return undef unless defined $s && $s =~ /\A\w{3}, (\d{2}) (\w{3}) (\d{4}) (\d{2}):(\d{2}):(\d{2}) GMT\z/;
    return undef unless exists $MON{$2};
    require Time::Local;
    return eval { Time::Local::timegm($6, $5, $4, $1, $MON{$2}, $3) };
}

sub send_file ($self, $path, %opt) {
    my @st = stat $path;
    return $self->error(404) unless @st && -f _ && -r _;
    require Cwd;
    my $abs = Cwd::abs_path($path);
    my ($size, $mtime) = @st[7, 9];
    my $etag = sprintf '"%x-%x"', $mtime, $size;
    my $type = $opt{content_type} // do { my ($ext) = $path =~ /\.([^.\/]+)\z/; $MIME{ lc($ext // '') } } // 'application/octet-stream';
    $self->header(etag => $etag)->header('last-modified' => __PACKAGE__->http_date($mtime))
        ->header('accept-ranges' => 'bytes');

    # If-None-Match wins over If-Modified-Since (RFC 9110 13.2.2).
    my $inm = $self->req->header('if-none-match');
    my $not_modified = defined $inm
        ? scalar(grep { $_ eq '*' || s/\AW\///r eq $etag } map { s/^\s+|\s+$//gr } split /,/, $inm)
        : do { my $ims = _parse_http_date(scalar $self->req->header('if-modified-since')); defined $ims && $mtime <= $ims };
    if ($not_modified && $self->method =~ /\A(?:GET|HEAD)\z/) {
        $self->status(304);
        return $self->send_response('');
    }

    my ($offset, $length) = (0, $size);
    my $range = $self->req->header('range');
    my $if_range = $self->req->header('if-range');
    if (defined $range && $range =~ /\Abytes=\s*(\d*)-(\d*)\s*\z/ && (!defined $if_range || $if_range eq $etag)) {
        my ($from, $to) = ($1, $2);
        if ($from eq '' && $to eq '') { }    # malformed: serve the whole file
        elsif ($from eq '') { $to = $size if $to > $size; ($offset, $length) = ($size - $to, $to) }
        else { $to = $size - 1 if $to eq '' || $to >= $size; ($offset, $length) = ($from, $to - $from + 1) }
        if ($from ne '' && $from >= $size || $length <= 0) {
            $self->status(416)->header('content-range' => "bytes */$size");
            return $self->send_response('');
        }
        $self->status(206)->header('content-range' => sprintf('bytes %d-%d/%d', $offset, $offset + $length - 1, $size));
    }
    $self->header('content-type' => $type)->header('content-length' => $length);
    my $start = $self->_start_event;
    my $send = $self->{send};
    my $body = $self->method eq 'HEAD' || $length == 0
        ? { type => 'http.response.body', body => '', more => 0 }
        : { type => 'http.response.body', file => $abs, offset => $offset, length => $length };
    return $self->_track($self->_send_start($start)->then(sub { $send->($body) }));
}

# --- streaming ---

sub stream ($self, $code, %opt) {
    $self->header('content-type' => $opt{content_type}) if $opt{content_type};
    $self->header('content-type' => 'application/octet-stream') unless $self->_has_header('content-type');
    my $writer = PAGI::Simple::Writer->new(send => $self->{send}, head => $self->method eq 'HEAD');
    my $start = $self->_start_event;
    my $f = (async sub {
        await $self->_send_start($start);
        my $r = $code->($writer);
        await $r if blessed($r) && $r->isa('Future');
        await $writer->close;
    })->();
    return $self->_track($f);
}

package PAGI::Simple::Writer;
use v5.36;
use Future;

=head1 NAME

PAGI::Simple::Writer - the writer of C<< $c->stream >>

=head1 METHODS

C<write($bytes_or_text)> (a Future; text is UTF-8-encoded), C<close> (ends the
response; later writes die), C<is_closed>.

=cut

sub new ($class, %args) { bless { %args }, $class }
sub is_closed ($self) { $self->{closed} ? 1 : 0 }
sub write ($self, $data) {
    die "write on a closed stream\n" if $self->{closed};
    return Future->done if $self->{head};
    return $self->{send}->({ type => 'http.response.body', body => PAGI::Simple::Context::_bytes($data), more => 1 });
}
sub close ($self) {
    return Future->done if $self->{closed}++;
    return $self->{send}->({ type => 'http.response.body', body => '', more => 0 });
}

package PAGI::Simple::Abort;
use v5.36;

=head1 NAME

PAGI::Simple::Abort - the exception C<< $c->error >> throws

=head1 METHODS

C<< PAGI::Simple::Abort->throw($code, $message, $context) >>, C<code>,
C<message> (may be undef), C<context>.

=cut

use overload '""' => sub ($self, @) { "HTTP $self->{code}" . (defined $self->{message} ? ": $self->{message}" : '') . "\n" }, fallback => 1;

sub new ($class, $code, $message = undef, $context = undef) {
    Carp::croak("error: '$code' is not an HTTP status code") unless defined $code && $code =~ /\A[1-5][0-9][0-9]\z/;
    bless { code => $code, message => $message, context => $context }, $class;
}
sub throw ($class, @args) { die $class->new(@args) }
sub code ($self) { $self->{code} }
sub message ($self) { $self->{message} }
sub context ($self) { $self->{context} }

1;
