package PAGI::Simple::Request;
use v5.36;
use Carp ();
use Encode ();
use Hash::MultiValue;
use Cookie::Baker ();
use JSON::MaybeXS ();

our $VERSION = '0.01';

=head1 NAME

PAGI::Simple::Request - the request side of a PAGI::Simple context (C<< $c->req >>)

=head1 DESCRIPTION

Built by the framework for each HTTP request. Bounded bodies (JSON,
urlencoded, multipart and anything else up to the app's limits) are read
before the handler runs, so every body accessor here is synchronous; that is
what lets a plain (non-async) handler call C<< $c->json_body >>.

=head1 METHODS

=over

=item method, path, query_string, scope, scheme, is_secure, root_path

Scope values. C<path> is the scope's path with C<root_path> removed (the path
inside the app).

=item headers, header($name), content_type, content_length, host, user_agent

C<headers> is a L<Hash::MultiValue> keyed by lower-case name; C<header> is
case-insensitive and returns the last value (all values in list context).

=item query, query_param($name), query_params($name)

The query string as a L<Hash::MultiValue> of decoded text; C<query_param> is
the last value, C<query_params> an arrayref of all values.

=item body, body_params, body_param($name), form_params($name), uploads, upload($name)

C<body> is the raw bytes. C<body_params> is a L<Hash::MultiValue> of the
urlencoded or multipart form fields (decoded UTF-8 text). Uploads are
L<PAGI::Simple::Upload> objects, spooled to temporary files by
L<HTTP::Entity::Parser>.

=item json_body, json_body_safe

The body decoded as JSON (L<JSON::MaybeXS>). Malformed JSON makes
C<json_body> throw a C<400> L<PAGI::Simple::Abort> whose message says what is
wrong; C<json_body_safe> returns undef instead. An empty body is undef.

=item cookies, cookie($name)

Request cookies (L<Cookie::Baker>), a hashref of name to value.

=item server_name, server_port, client_ip, client_port, path_params, path_param($name)

=item receive_body

Returns a Future of the body bytes; for routes declared with
C<< { raw_body => 1 } >> it reads the body from C<$receive> on first use.

=back

=cut

sub new ($class, %args) { bless { %args }, $class }

sub scope ($self)        { $self->{scope} }
sub method ($self)       { $self->{scope}{method} // 'GET' }
sub root_path ($self)    { $self->{scope}{root_path} // '' }
sub path ($self)         { $self->{app_path} // $self->{scope}{path} }
sub query_string ($self) { $self->{scope}{query_string} // '' }
sub scheme ($self)       { $self->{scope}{scheme} // 'http' }
sub is_secure ($self)    { $self->scheme =~ /\A(?:https|wss)\z/ ? 1 : 0 }
sub path_params ($self)  { $self->{path_params} //= {} }
sub path_param ($self, $name) { $self->path_params->{$name} }

sub headers ($self) {
    $self->{headers} //= Hash::MultiValue->new(map { (lc $_->[0], $_->[1]) } @{ $self->{scope}{headers} || [] });
}

sub header ($self, $name) {
    my @v = $self->headers->get_all(lc $name);
    return wantarray ? @v : $v[-1];
}

sub content_type ($self)   { scalar $self->header('content-type') }
sub content_length ($self) { scalar $self->header('content-length') }
sub host ($self)           { scalar $self->header('host') }
sub user_agent ($self)     { scalar $self->header('user-agent') }
sub server_name ($self)    { $self->{scope}{server} ? $self->{scope}{server}[0] : undef }
sub server_port ($self)    { ($self->{scope}{server} ? $self->{scope}{server}[1] : undef) // 80 }
sub client_ip ($self)      { $self->{scope}{client} ? $self->{scope}{client}[0] : undef }
sub client_port ($self)    { $self->{scope}{client} ? $self->{scope}{client}[1] : undef }

sub _text ($bytes) { Encode::decode('UTF-8', $bytes // '') }

sub parse_urlencoded ($class, $string) {
    my @pairs;
    for my $pair (split /[&;]/, $string // '') {
        next unless length $pair;
        my ($k, $v) = split /=/, $pair, 2;
        for ($k, $v) {
            next unless defined;
            tr/+/ /;
            s/%([0-9A-Fa-f]{2})/chr hex $1/ge;
            $_ = _text($_);
        }
        push @pairs, $k, $v // '';
    }
    return @pairs;
}

sub query ($self) {
    $self->{query} //= Hash::MultiValue->new(__PACKAGE__->parse_urlencoded($self->query_string));
}
sub query_param ($self, $name)  { scalar $self->query->get($name) }
sub query_params ($self, $name) { [ $self->query->get_all($name) ] }

sub body ($self) { $self->{body} // '' }

sub receive_body ($self) {
    return Future->done($self->body) if defined $self->{body};
    my $receive = $self->{receive};
    my $buf = '';
    my $loop; $loop = sub {
        $receive->()->then(sub ($ev) {
            return Future->done($self->{body} = $buf) unless ($ev->{type} // '') eq 'http.request';
            $buf .= $ev->{body} // '';
            return $ev->{more} ? $loop->() : Future->done($self->{body} = $buf);
        });
    };
    return $loop->();
}

# Form fields and uploads, parsed once by HTTP::Entity::Parser from the buffered body.
sub _parse_form ($self) {
    return if $self->{form};
    my $type = $self->content_type // '';
    my (@params, @uploads);
    if ($type =~ m{\A(?:application/x-www-form-urlencoded|multipart/form-data)}i && length $self->body) {
        require HTTP::Entity::Parser;
        my $parser = HTTP::Entity::Parser->new(buffer_length => 65536);
        $parser->register('application/x-www-form-urlencoded', 'HTTP::Entity::Parser::UrlEncoded');
        $parser->register('multipart/form-data', 'HTTP::Entity::Parser::MultiPart');
        my $body = $self->body;
        open my $input, '<', \$body or die "in-memory body: $!";
        # The parser ties the upload spool directory's lifetime to this env: keep it with the request.
        my $env = $self->{parser_env} = { CONTENT_TYPE => $type, CONTENT_LENGTH => length $body,
            'psgi.input' => $input, 'psgix.input.buffered' => 1 };
        my ($p, $u) = eval { $parser->parse($env) };
        PAGI::Simple::Abort->throw(400, "Malformed form body: " . ($@ =~ s/ at \S+ line \d+.*//sr)) if $@;
        my @p = @{ $p || [] };
        while (my ($k, $v) = splice @p, 0, 2) { push @params, _text($k), _text($v) }
        my @u = @{ $u || [] };
        while (my ($k, $info) = splice @u, 0, 2) {
            push @uploads, _text($k), PAGI::Simple::Upload->new(%$info);
        }
    }
    $self->{form} = Hash::MultiValue->new(@params);
    $self->{uploads} = Hash::MultiValue->new(@uploads);
}

sub body_params ($self) { $self->_parse_form; $self->{form} }
sub body_param ($self, $name) { scalar $self->body_params->get($name) }
sub form_params ($self, $name) { [ $self->body_params->get_all($name) ] }
sub uploads ($self) { $self->_parse_form; $self->{uploads} }
sub upload ($self, $name) { scalar $self->uploads->get($name) }

my $JSON = JSON::MaybeXS->new(utf8 => 1, allow_nonref => 1);

sub json_body ($self) {
    return $self->{json} if exists $self->{json};
    my $body = $self->body;
    return $self->{json} = undef unless length $body;
    my $data = eval { $JSON->decode($body) };
    if (my $err = $@) {
        $err =~ s/ at \S+ line \d+\.?\n?\z//;
        PAGI::Simple::Abort->throw(400, "Malformed JSON in request body: $err");
    }
    return $self->{json} = $data;
}

sub json_body_safe ($self) {
    my $data = eval { $self->json_body };
    return $data;
}

sub cookies ($self) {
    $self->{cookies} //= Cookie::Baker::crush_cookie(scalar($self->header('cookie')) // '');
}
sub cookie ($self, $name) { $self->cookies->{$name} }

package PAGI::Simple::Upload;
use v5.36;
use File::Copy ();

=head1 NAME

PAGI::Simple::Upload - one uploaded file (C<< $c->req->upload('field') >>)

=head1 METHODS

C<filename> (as the client sent it; never use it as a path), C<size>,
C<content_type>, C<headers> (arrayref), C<path> (the temporary file; it goes
away with the request), C<slurp> (the bytes), C<copy_to($dest)>.

=cut

sub new ($class, %info) { bless { %info }, $class }
sub filename ($self) { $self->{filename} }
sub size ($self) { $self->{size} }
sub path ($self) { $self->{tempname} }
sub headers ($self) { $self->{headers} || [] }
sub content_type ($self) {
    my @h = @{ $self->headers };
    while (my ($k, $v) = splice @h, 0, 2) { return $v if lc $k eq 'content-type' }
    return 'application/octet-stream';
}
sub slurp ($self) {
    open my $fh, '<:raw', $self->path or die "upload '$self->{name}': $!";
    local $/;
    return scalar <$fh>;
}
sub copy_to ($self, $dest) { File::Copy::copy($self->path, $dest) or die "copy upload to '$dest': $!"; 1 }

1;
